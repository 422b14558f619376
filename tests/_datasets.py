"""Dataset fixtures written by the tests themselves (nothing installed by hand is ever needed).

The files follow the real formats byte for byte (IDX for Fashion-MNIST, pickled batches for CIFAR), written
independently of the readers under test; the pixels are synthetic.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

_IDX_CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B,
              np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` in the IDX format."""
    array = np.asarray(array)
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def garment_images(labels: np.ndarray, seed: int, size: int = 28) -> np.ndarray:
    """Synthetic 28x28 grayscale "garments": a class-specific silhouette (width, height, sleeves, a gap between
    legs) with random jitter, shading and texture, so that images differ within and between classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1) - 0.5
    out = np.empty((len(labels), size, size), dtype=np.uint8)
    for n, k in enumerate(labels):
        k = int(k)
        w = 0.18 + 0.025 * k + rng.normal(0, 0.02)
        h = 0.30 + 0.012 * ((k * 3) % 10) + rng.normal(0, 0.02)
        cx, cy = rng.normal(0, 0.03, size=2)
        body = (np.abs(xx - cx) < w) & (np.abs(yy - cy) < h)
        if k in (0, 2, 4, 6):  # sleeves
            body |= (np.abs(yy - cy + h * 0.6) < 0.08) & (np.abs(xx - cx) < w + 0.15)
        if k == 1:  # trousers: a gap between the legs
            body &= ~((np.abs(xx - cx) < 0.04) & (yy > cy - h * 0.3))
        shade = 0.45 + 0.5 * rng.random() + 0.3 * (xx * rng.normal() + yy * rng.normal())
        texture = 0.12 * rng.standard_normal((size, size))
        img = np.where(body, np.clip(shade + texture, 0.05, 1.0), 0.02 * rng.random((size, size)))
        out[n] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return out


def write_fashion_mnist(folder: Path, per_class_train: int = 240, per_class_test: int = 120,
                        seed: int = 0) -> Path:
    """The four Fashion-MNIST IDX files (train gzip-compressed, test plain) with balanced, shuffled classes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, per_class, gz in (("train", per_class_train, True), ("t10k", per_class_test, False)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        images = garment_images(labels, seed=seed + (1 if prefix == "train" else 2))
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return folder
