"""Reader for the IDX file format (MNIST / Fashion-MNIST), plain or gzip-compressed.

Layout (all integers big-endian): two zero bytes, one type byte (0x08 uint8, 0x09 int8, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), one byte with the number of dimensions ``d``, then ``d`` uint32
sizes, then the data in C order. The file must be exactly that long; anything else is reported as a
:class:`~gradaudit.data.base.CorruptDataError` naming the file.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from gradaudit.data.base import CorruptDataError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptDataError(f"{path}: gzip stream is truncated or corrupt ({exc})") from exc


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a native-endian array, validating magic number, dimensions and length."""
    if len(raw) < 4:
        raise CorruptDataError(f"{source}: too short for an IDX header ({len(raw)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in IDX_TYPES:
        raise CorruptDataError(f"{source}: bad IDX magic number 0x{raw[:4].hex()} "
                               f"(expected 0x0000 then a type byte in {sorted(hex(t) for t in IDX_TYPES)})")
    if ndim == 0:
        raise CorruptDataError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDataError(f"{source}: truncated IDX header (needs {header} bytes, file has {len(raw)})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "has trailing bytes"
        raise CorruptDataError(f"{source}: IDX data {state}: dims {dims} of {dtype.name} need {expected} bytes, "
                               f"file has {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not; detected from its first bytes) into a numpy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))
