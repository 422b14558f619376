"""CIFAR-10 and CIFAR-100: 60,000 colour 32x32 natural images (50,000 train / 10,000 test; Krizhevsky 2009).

Format: the official "python version" pickles. CIFAR-10 is the folder ``cifar-10-batches-py`` with
``data_batch_1`` ... ``data_batch_5`` (train), ``test_batch`` and ``batches.meta`` (``label_names``);
CIFAR-100 is ``cifar-100-python`` with ``train``, ``test`` and ``meta`` (``fine_label_names``; the 100 fine
labels are used). Each batch is a dict with ``data`` (uint8 ``[n, 3072]``, row-major R, G, B planes) and
``labels`` / ``fine_labels``; keys may be bytes (the real files) or str. Files are read with
:mod:`gradaudit.data.safe_pickle`, so a tampered file cannot run code.

Looked for, in order: ``root`` (itself, or ``root/<folder>``), ``$GRADAUDIT_DATA/<folder>`` and
``~/.cache/gradaudit/<folder>``. ``download=True`` fetches and unpacks the official ``.tar.gz`` into ``root``
(or ``~/.cache/gradaudit``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradaudit.data import _download, _locate, safe_pickle
from gradaudit.data._pixels import resize_images
from gradaudit.data.base import CorruptDataError, ImageDataset
from gradaudit.errors import unknown_name
from gradaudit.data.registry import register_dataset


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant's files live and how they are keyed."""

    name: str
    title: str
    folder: str
    files: dict[str, tuple[str, ...]]  # split -> batch file names
    meta_file: str
    names_key: str
    labels_key: str
    num_classes: int
    mean: tuple[float, float, float]  # published training-set statistics
    std: tuple[float, float, float]
    url: str
    md5: str


CIFAR10 = CifarSpec(
    "cifar10", "CIFAR-10", "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "batches.meta", "label_names", "labels", 10,
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
CIFAR100 = CifarSpec(
    "cifar100", "CIFAR-100", "cifar-100-python",
    {"train": ("train",), "test": ("test",)},
    "meta", "fine_label_names", "fine_labels", 100,
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")


def _get(d: Any, key: str, source: Path) -> Any:
    """``d[key]`` accepting bytes or str keys."""
    if isinstance(d, dict):
        for k in (key.encode(), key):
            if k in d:
                return d[k]
    raise CorruptDataError(f"{source}: expected a dict with key '{key}'")


def _text(x: Any) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_pickle.load(path)
    data = np.asarray(_get(batch, "data", path))
    labels = np.asarray(_get(batch, spec.labels_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptDataError(f"{path}: 'data' must be uint8 [n, 3072], got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise CorruptDataError(f"{path}: '{spec.labels_key}' must be {data.shape[0]} integers, "
                               f"got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise CorruptDataError(f"{path}: labels must lie in [0, {spec.num_classes - 1}]")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _complete(folder: Path, spec: CifarSpec, split: str) -> bool:
    return all((folder / f).is_file() for f in (*spec.files[split], spec.meta_file))


def _fetch(spec: CifarSpec, root: str | os.PathLike | None) -> Path:
    parent = Path(root).expanduser() if root is not None else _locate.cache_dir()
    archive = _download.fetch(spec.url, parent / spec.url.rsplit("/", 1)[1], spec.md5)
    _download.extract_tar(archive, parent)
    archive.unlink(missing_ok=True)
    return parent / spec.folder


def load_cifar(spec: CifarSpec, root: str | os.PathLike | None = None, split: str = "train",
               image_size: int | None = None, download: bool = False) -> ImageDataset:
    """Load ``split`` ("train" or "test") of a CIFAR variant as a 3-channel 32x32 :class:`ImageDataset`."""
    if split not in spec.files:
        raise unknown_name("split", split, spec.files)
    looked = _locate.candidate_dirs(spec.folder, root)
    folder = next((d for d in looked if _complete(d, spec, split)), None)
    if folder is None and download:
        folder = _fetch(spec, root)
    if folder is None or not _complete(folder, spec, split):
        wanted = f"{spec.folder}/{{{', '.join((*spec.files[split], spec.meta_file))}}}"
        raise _locate.not_found(spec.title, wanted, looked,
                                f"Download and unpack {spec.url} into one of those folders, "
                                "or pass download=True (`--download`).")
    meta = safe_pickle.load(folder / spec.meta_file)
    classes = [_text(c) for c in _get(meta, spec.names_key, folder / spec.meta_file)]
    if len(classes) != spec.num_classes:
        raise CorruptDataError(f"{folder / spec.meta_file}: expected {spec.num_classes} class names, "
                               f"got {len(classes)}")
    parts = [_read_batch(folder / f, spec) for f in spec.files[split]]
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate([p[0] for p in parts])))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ImageDataset(spec.name, resize_images(images, image_size), labels, classes, spec.mean, spec.std)


@register_dataset("cifar10")
def load_cifar10(root: str | os.PathLike | None = None, split: str = "train", image_size: int | None = None,
                 download: bool = False) -> ImageDataset:
    """CIFAR-10 (10 classes); see the module docstring for format and search paths."""
    return load_cifar(CIFAR10, root, split, image_size, download)


@register_dataset("cifar100")
def load_cifar100(root: str | os.PathLike | None = None, split: str = "train", image_size: int | None = None,
                  download: bool = False) -> ImageDataset:
    """CIFAR-100 with its 100 fine labels; see the module docstring for format and search paths."""
    return load_cifar(CIFAR100, root, split, image_size, download)
