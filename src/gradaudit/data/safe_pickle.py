"""A restricted unpickler for data files (the CIFAR python batches).

Plain :func:`pickle.load` runs any callable a file names, so a tampered data file could execute code. The
:class:`SafeUnpickler` here resolves only the globals these files need to rebuild numpy arrays (array
reconstruction, ``numpy.ndarray``, ``numpy.dtype``, numpy scalars, the ``latin1`` bytes shim that protocol-2
pickles use) and a few inert builtin types; any other global raises :class:`UnsafePickleError` before
anything is called.
"""

from __future__ import annotations

import _codecs
import builtins
import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from gradaudit.data.base import CorruptDataError


class UnsafePickleError(CorruptDataError, pickle.UnpicklingError):
    """A pickle names a global outside the allow-list (a tampered or foreign file)."""


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only does what pickle protocol 2 uses it for: str -> latin1 bytes."""
    if encoding not in ("latin1", "latin-1") or errors != "strict" or not isinstance(obj, str):
        raise UnsafePickleError(f"pickle calls _codecs.encode with encoding {encoding!r}; only latin1 is allowed")
    return _codecs.encode(obj, "latin1")


def _numpy_attr(module: str, name: str) -> Any:
    """Resolve ``numpy.core.<sub>.<name>`` (numpy 1 spelling) or ``numpy._core.<sub>.<name>`` (numpy 2)."""
    sub = module.split(".", 2)[2] if module.count(".") >= 2 else ""
    for base in ("numpy._core", "numpy.core"):
        try:
            mod = importlib.import_module(f"{base}.{sub}" if sub else base)
            return getattr(mod, name)
        except (ImportError, AttributeError):
            continue
    raise UnsafePickleError(f"numpy global {module}.{name} is not available")


# (module, name) pairs a data pickle may reference; numpy.core.* and numpy._core.* are equivalent.
_NUMPY_CORE = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{("builtins", n): getattr(builtins, n) for n in ("set", "frozenset", "bytearray", "complex", "slice")},
    **{("__builtin__", n): getattr(builtins, n) for n in ("set", "frozenset", "bytearray", "complex", "slice")},
}


class SafeUnpickler(pickle.Unpickler):
    """An :class:`pickle.Unpickler` whose ``find_class`` only resolves the allow-listed globals."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        parts = module.split(".")
        if parts[:2] in (["numpy", "core"], ["numpy", "_core"]) and len(parts) == 3 \
                and (parts[2], name) in _NUMPY_CORE:
            return _numpy_attr(module, name)
        raise UnsafePickleError(f"refusing to load pickle global {module}.{name}: data files may only "
                                "contain numpy arrays and basic Python values")


def loads(data: bytes, encoding: str = "bytes", source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`; malformed data raises :class:`CorruptDataError`."""
    try:
        return SafeUnpickler(io.BytesIO(data), encoding=encoding).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError) as exc:
        raise CorruptDataError(f"{source}: not a valid data pickle ({type(exc).__name__}: {exc})") from exc


def load(path: str | os.PathLike, encoding: str = "bytes") -> Any:
    """Read and safely unpickle the file at ``path`` (``encoding='bytes'`` keeps Python 2 str as bytes)."""
    path = Path(path)
    return loads(path.read_bytes(), encoding=encoding, source=str(path))
