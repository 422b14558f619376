"""Dataset names and the one entry point, :func:`load_dataset`.

=================  ==========================================================================================
name               what it is
=================  ==========================================================================================
``embedded``       default; 64 colour 32x32 crops of 8 photos shipped inside installed wheels (offline)
``fashion-mnist``  Fashion-MNIST IDX files (Debian ``dataset-fashion-mnist``, root, ``$GRADAUDIT_DATA``, cache)
``cifar10``        CIFAR-10 python pickle batches (``cifar-10-batches-py``)
``cifar100``       CIFAR-100 python pickles (``cifar-100-python``), fine labels
``image-folder``   your images, ``root/<class_name>/*.png|jpg|jpeg|bmp|webp``
``lfw``            scikit-image's bundled 200-image LFW face / non-face subset (offline)
=================  ==========================================================================================

Each module's docstring says where its files are looked for and their format.
"""

from __future__ import annotations

import os
from typing import Protocol

from gradaudit.data import cifar, embedded, fashion_mnist, image_folder, lfw
from gradaudit.data._pixels import check_size
from gradaudit.data.base import ImageDataset
from gradaudit.errors import ConfigError, unknown_name


class DatasetLoader(Protocol):
    def __call__(self, root: str | os.PathLike | None = None, split: str = "train",
                 image_size: int | None = None, download: bool = False) -> ImageDataset: ...


DATASETS: dict[str, DatasetLoader] = {
    "embedded": embedded.load,
    "fashion-mnist": fashion_mnist.load,
    "cifar10": cifar.load_cifar10,
    "cifar100": cifar.load_cifar100,
    "image-folder": image_folder.load,
    "lfw": lfw.load,
}

DEFAULT_DATASET = "embedded"
#: datasets that ship inside installed wheels: no folder to look in, nothing to download
BUNDLED = frozenset({"embedded", "lfw"})


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                 image_size: int | None = None, download: bool = False) -> ImageDataset:
    """Load dataset ``name`` (a key of :data:`DATASETS`) as an in-memory :class:`ImageDataset`.

    ``root`` is where to look first (required for ``image-folder``), ``split`` is "train" or "test",
    ``image_size`` resizes every image to ``image_size`` x ``image_size`` (Pillow, antialiased bicubic), and
    ``download=True`` lets the on-disk datasets fetch their official files when they are not found.
    """
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    if not isinstance(split, str):
        raise ConfigError(f"split must be a string such as 'train' or 'test', got {split!r}")
    if name in BUNDLED and (root is not None or download):
        what = "a data root (--data-root, data.root)" if root is not None else "download"
        raise ConfigError(f"dataset '{name}' ships inside the installed packages, so {what} does not apply to "
                          f"it; leave it out, or pick a dataset read from files (image-folder, fashion-mnist, cifar10)")
    check_size(image_size)
    return DATASETS[name](root=root, split=split, image_size=image_size, download=download)
