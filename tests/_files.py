"""Helpers for tests that hand-edit gradaudit's checksummed files (observations, checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from gradaudit.checked_files import INTEGRITY_KEY, pair_paths, seal


def edit_meta(path: str | Path, edit: Callable[[dict[str, Any]], Any], reseal: bool = True) -> Path:
    """Apply ``edit`` to a pair's JSON metadata; with ``reseal`` recompute its checksum, as a tool that knows the
    format would (to test the checks behind the checksum), else leave the old one (an edit gradaudit must notice).
    """
    st, js = pair_paths(path)
    meta = json.loads(js.read_text())
    edit(meta)
    if reseal and INTEGRITY_KEY in meta:
        meta = seal(st.read_bytes(), meta)
    js.write_text(json.dumps(meta))
    return js


def make_legacy(path: str | Path, tensor_checksum: bool = True) -> Path:
    """Rewrite a pair's JSON as gradaudit before checksum version 2 wrote it: the tensor file's SHA-256 only
    (``tensor_checksum``), or no checksum at all."""
    import hashlib

    st, js = pair_paths(path)
    meta = json.loads(js.read_text())
    meta.pop(INTEGRITY_KEY, None)
    if tensor_checksum:
        meta["sha256"] = hashlib.sha256(st.read_bytes()).hexdigest()
    js.write_text(json.dumps(meta))
    return js
