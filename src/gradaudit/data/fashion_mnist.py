"""Fashion-MNIST: 70,000 grayscale 28x28 images of clothing in 10 classes (Zalando Research).

Format: four IDX files (see :mod:`gradaudit.data.idx`), ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte``
(60,000 images) and ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` (10,000), each optionally
gzip-compressed (``.gz``); the ``train-images.idx3-ubyte`` spelling is accepted too.

Looked for, in order: ``root`` (and ``root/fashion-mnist``), ``$GRADAUDIT_DATA/fashion-mnist``,
``~/.cache/gradaudit/fashion-mnist`` and Debian's ``dataset-fashion-mnist`` package folder
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``). ``download=True`` fetches
the official gzip files into ``root`` (or the user cache folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from gradaudit.data import _download, _locate
from gradaudit.data._pixels import resize_images
from gradaudit.data.base import CorruptDataError, ImageDataset
from gradaudit.data.idx import read_idx
from gradaudit.errors import unknown_name
from gradaudit.data.registry import register_dataset

NAME = "fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
MEAN = (0.2860,)  # published training-set statistics
STD = (0.3530,)
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
PREFIX = {"train": "train", "test": "t10k"}
HOW = ("Install it with `apt-get install dataset-fashion-mnist`, put the IDX files in one of those folders, "
       "or pass download=True (`--download`) to fetch them.")


def _file_names(prefix: str, kind: str) -> list[str]:
    """Accepted names of one IDX file, e.g. kind='images' -> train-images-idx3-ubyte[.gz] and variants."""
    code = "idx3" if kind == "images" else "idx1"
    bases = [f"{prefix}-{kind}-{code}-ubyte", f"{prefix}-{kind}.{code}-ubyte"]
    return [b + ext for b in bases for ext in ("", ".gz")]


def _find_pair(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    found = []
    for kind in ("images", "labels"):
        path = next((folder / n for n in _file_names(prefix, kind) if (folder / n).is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _fetch_all(dest: Path) -> None:
    for fname, md5 in MD5.items():
        if not (dest / fname).is_file():
            _download.fetch(URL + fname, dest / fname, md5)


@register_dataset("fashion-mnist")
def load(root: str | os.PathLike | None = None, split: str = "train", image_size: int | None = None,
         download: bool = False) -> ImageDataset:
    """Load the Fashion-MNIST ``split`` ("train" or "test") as a 1-channel 28x28 :class:`ImageDataset`."""
    if split not in PREFIX:
        raise unknown_name("split", split, PREFIX)
    prefix = PREFIX[split]
    looked = _locate.candidate_dirs(NAME, root, [DEBIAN_DIR])
    pair = next((p for d in looked if (p := _find_pair(d, prefix)) is not None), None)
    if pair is None and download:
        dest = _locate.download_dir(NAME, root)
        _fetch_all(dest)
        pair = _find_pair(dest, prefix)
    if pair is None:
        raise _locate.not_found("Fashion-MNIST", f"{prefix}-images-idx3-ubyte[.gz] and "
                                f"{prefix}-labels-idx1-ubyte[.gz]", looked, HOW)
    images, labels = (read_idx(p) for p in pair)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise CorruptDataError(f"{pair[0]} / {pair[1]}: expected uint8 images [N, H, W] and labels [N], got "
                               f"{images.dtype} {images.shape} and {labels.dtype} {labels.shape}")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise CorruptDataError(f"{pair[1]}: label {int(labels.max())} out of range for {len(CLASSES)} classes")
    x = resize_images(torch.from_numpy(images).unsqueeze(1).contiguous(), image_size)
    return ImageDataset(NAME, x, torch.from_numpy(labels.astype("int64")), list(CLASSES), MEAN, STD)
