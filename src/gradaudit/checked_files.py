"""Tensors on disk as a checksummed pair: ``NAME.safetensors`` (tensors only; nothing is ever unpickled) and
``NAME.json`` (metadata, its ``format`` name, and one checksum over both files).

Used by observations (:mod:`gradaudit.threat.observation`) and generator checkpoints
(:mod:`gradaudit.attacks.priors.checkpoint`).

The checksum (``integrity`` in the JSON) is

    SHA-256( "gradaudit-checked-pair/2\\n" || SHA-256(tensor file) || canonical JSON of the metadata )

where the canonical JSON is the metadata without ``integrity`` itself, keys sorted, no spaces, ASCII. So a
truncated or modified tensor file *and* any edit of a metadata field (the batch size, whether labels are known,
the defenses, the model spec) are refused. It detects corruption and edits made without gradaudit; it is not a
signature (whoever can write the files can recompute it).

Reading refuses a missing file, invalid JSON, the wrong format, a checksum mismatch and an unparsable tensor
file, each with one clear message, raised as the caller's error class. A file without this checksum (written by
gradaudit before version 2, which checksummed the tensors only, or by hand) is refused unless the caller passes
``allow_legacy=True`` (``--allow-legacy``): then a tensor-only ``sha256`` is still checked when present, and
:attr:`CheckedPair.legacy` says what was not covered so the caller can tell the user.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

INTEGRITY_KEY = "integrity"
SCHEME = "sha256/tensors+metadata/v2"
_DOMAIN = b"gradaudit-checked-pair/2\n"
#: largest metadata file read (a JSON of this size is far beyond any real observation or checkpoint)
MAX_JSON_BYTES = 64 * 1024 * 1024


@dataclass
class CheckedPair:
    """What :func:`read_checked` returns. ``legacy`` is None for a fully checked file, else a note saying what
    was not verified (only with ``allow_legacy``)."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    legacy: str | None = None


def pair_paths(path: str | Path) -> tuple[Path, Path]:
    """(NAME.safetensors, NAME.json) from either file's path or their common stem."""
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".safetensors", ".json") else base
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def canonical_metadata(meta: dict[str, Any]) -> bytes:
    """The metadata (without its checksum) as canonical JSON bytes: sorted keys, compact, ASCII."""
    body = {k: v for k, v in meta.items() if k != INTEGRITY_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def pair_digest(tensor_bytes: bytes, meta: dict[str, Any]) -> str:
    """The checksum of a pair: see the module docstring."""
    h = hashlib.sha256(_DOMAIN)
    h.update(hashlib.sha256(tensor_bytes).digest())
    h.update(canonical_metadata(meta))
    return h.hexdigest()


def seal(tensor_bytes: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with its ``integrity`` entry (re)computed for the given tensor file contents."""
    body = {k: v for k, v in meta.items() if k != INTEGRITY_KEY}
    return {**body, INTEGRITY_KEY: {"scheme": SCHEME, "sha256": pair_digest(tensor_bytes, body)}}


def write_checked(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                  json_default: Callable[[Any], Any] | None = None) -> tuple[Path, Path]:
    """Write the pair, each file through a temporary name and an atomic rename; ``meta`` gains ``integrity``.

    An interruption between the two renames leaves a checksum mismatch, which :func:`read_checked` refuses."""
    from safetensors.torch import save_file

    st_path, js_path = pair_paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_st, tmp_js = st_path.with_name(st_path.name + ".tmp"), js_path.with_name(js_path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp_st))
    # the digest is taken over the metadata exactly as it reads back from the JSON
    plain = json.loads(json.dumps({k: v for k, v in meta.items() if k not in (INTEGRITY_KEY, "sha256")},
                                  default=json_default))
    tmp_js.write_text(json.dumps(seal(tmp_st.read_bytes(), plain), indent=2))
    tmp_st.replace(st_path)
    tmp_js.replace(js_path)
    return st_path, js_path


def _read_json(js_path: Path, error: type[Exception]) -> Any:
    if js_path.stat().st_size > MAX_JSON_BYTES:
        raise error(f"{js_path} is larger than {MAX_JSON_BYTES // 2**20} MiB; not a gradaudit metadata file")
    try:
        return json.loads(js_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{js_path} is not a text (UTF-8) JSON file") from None
    except json.JSONDecodeError as e:
        raise error(f"{js_path} is not valid JSON: {e}") from None
    except RecursionError:
        raise error(f"{js_path} is nested too deeply to be gradaudit metadata") from None


def read_checked(path: str | Path, fmt: str, error: type[Exception], what: str, *,
                 allow_legacy: bool = False) -> CheckedPair:
    """The pair at ``path`` whose JSON says ``format == fmt``, verified; ``error(message)`` for anything wrong.

    ``what`` names the kind of file in messages ("observation", "checkpoint"). ``allow_legacy`` accepts a file
    without the version-2 checksum (see the module docstring)."""
    from safetensors.torch import load

    st_path, js_path = pair_paths(path)
    for p in (st_path, js_path):
        if not p.is_file():
            raise error(f"{what} file not found: {p} (a {what} is NAME.safetensors + NAME.json)")
    meta = _read_json(js_path, error)
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != fmt:
        raise error(f"{js_path} is not a gradaudit {what} (format={found!r}, expected {fmt!r})")
    raw = st_path.read_bytes()
    legacy = None
    integrity = meta.get(INTEGRITY_KEY)
    if integrity is not None:
        if not isinstance(integrity, dict) or integrity.get("scheme") != SCHEME:
            raise error(f"{js_path}: unknown checksum scheme {integrity!r} (this gradaudit reads {SCHEME!r})")
        if pair_digest(raw, meta) != integrity.get("sha256"):
            raise error(f"{st_path.name} + {js_path.name} do not match their checksum: the tensor file or a "
                        f"metadata field was modified, or a file is truncated")
    elif not allow_legacy:
        raise error(f"{js_path} has no checksum over its metadata (written by hand or by gradaudit before "
                    f"checksum version 2), so edits cannot be detected; read it anyway with --allow-legacy "
                    f"(API: allow_legacy=True)")
    else:
        old = meta.get("sha256")
        if old is not None and hashlib.sha256(raw).hexdigest() != old:
            raise error(f"{st_path} does not match the checksum in {js_path.name}: truncated or modified")
        legacy = (f"legacy {what} {js_path}: " + ("only its tensors are checksummed" if old is not None else
                  "no checksum at all") + "; its metadata (batch size, labels, defenses, model) is not verified")
    try:
        tensors = load(raw)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise error(f"{st_path} is not a valid safetensors file: {' '.join(str(e).split())}") from None
    return CheckedPair(tensors, meta, legacy)
