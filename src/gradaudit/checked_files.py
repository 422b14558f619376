"""Tensors on disk as a checksummed pair: ``NAME.safetensors`` (tensors only; nothing is ever unpickled) and
``NAME.json`` (metadata, its ``format`` name, and the SHA-256 of the tensor file).

Used by observations (:mod:`gradaudit.threat.observation`) and generator checkpoints
(:mod:`gradaudit.attacks.priors.checkpoint`). Reading refuses a missing file, invalid JSON, the wrong format,
a checksum mismatch (a truncated or modified tensor file) and an unparsable tensor file, each with one clear
message, raised as the caller's error class.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch


def pair_paths(path: str | Path) -> tuple[Path, Path]:
    """(NAME.safetensors, NAME.json) from either file's path or their common stem."""
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".safetensors", ".json") else base
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def write_checked(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                  json_default: Callable[[Any], Any] | None = None) -> tuple[Path, Path]:
    """Write the pair, each file through a temporary name and an atomic rename; ``meta`` gains ``sha256``.

    An interruption between the two renames leaves a checksum mismatch, which :func:`read_checked` refuses."""
    from safetensors.torch import save_file

    st_path, js_path = pair_paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_st, tmp_js = st_path.with_name(st_path.name + ".tmp"), js_path.with_name(js_path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp_st))
    meta = {**meta, "sha256": hashlib.sha256(tmp_st.read_bytes()).hexdigest()}
    tmp_js.write_text(json.dumps(meta, indent=2, default=json_default))
    tmp_st.replace(st_path)
    tmp_js.replace(js_path)
    return st_path, js_path


def read_checked(path: str | Path, fmt: str, error: type[Exception], what: str,
                 require_checksum: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a pair whose JSON says ``format == fmt``; ``error(message)`` for anything wrong.

    ``what`` names the kind of file in messages ("observation", "checkpoint"). With ``require_checksum``
    False a JSON without ``sha256`` is accepted (files written before checksums existed)."""
    from safetensors.torch import load

    st_path, js_path = pair_paths(path)
    for p in (st_path, js_path):
        if not p.is_file():
            raise error(f"{what} file not found: {p} (a {what} is NAME.safetensors + NAME.json)")
    try:
        meta = json.loads(js_path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{js_path} is not valid JSON: {e}") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != fmt:
        raise error(f"{js_path} is not a gradaudit {what} (format={found!r}, expected {fmt!r})")
    raw = st_path.read_bytes()
    if (require_checksum or "sha256" in meta) and hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
        raise error(f"{st_path} does not match the checksum in {js_path.name}: truncated or modified")
    try:
        tensors = load(raw)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise error(f"{st_path} is not a valid safetensors file: {e}") from None
    return tensors, meta
