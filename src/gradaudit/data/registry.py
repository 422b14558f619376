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

Each loader declares what other parts need to know about its data where it is defined
(:func:`register_dataset`): its splits, whether they hold the same images (then no image of one split is
held out from the other: a prior trained on ``lfw``/train has seen every ``lfw``/test image), what groups
images by source (the embedded crops of one photo share its content: label = photo), and whether it ships
inside the wheels (no folder, nothing to download). Each module's docstring says where its files are looked
for and their format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from gradaudit.data._pixels import check_size
from gradaudit.data.base import ImageDataset
from gradaudit.errors import ConfigError, unknown_name


class DatasetLoader(Protocol):
    def __call__(self, root: str | os.PathLike | None = None, split: str = "train",
                 image_size: int | None = None, download: bool = False) -> ImageDataset: ...


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset declares about itself (:func:`register_dataset`).

    Attributes:
        name: the name ``load_dataset`` takes.
        splits: the split names it accepts.
        shared_splits: True when every split holds the same images; None when it depends on the files (an
            image folder without ``train/`` and ``test/`` sub-folders shares them).
        source_groups: "" when images are independent, else what groups images of one source ("label": the
            images of one class are crops of one photo), so a held-out check can refuse a prior that saw
            another image of the same source.
        bundled: the data ships inside installed wheels (no root to search, nothing to download).
    """

    name: str
    loader: DatasetLoader = field(repr=False, compare=False)
    splits: tuple[str, ...] = ("train", "test")
    shared_splits: bool | None = False
    source_groups: str = ""
    bundled: bool = False


#: name -> declaration, filled by :func:`register_dataset` where each loader is defined
DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *, splits: tuple[str, ...] = ("train", "test"), shared_splits: bool | None = False,
                     source_groups: str = "", bundled: bool = False) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator on a loader function: ``load_dataset(name, ...)`` calls it, and the facts are declared."""
    def decorate(loader: DatasetLoader) -> DatasetLoader:
        if name in DATASETS:
            raise ValueError(f"dataset '{name}' is registered twice")
        DATASETS[name] = DatasetInfo(name, loader, tuple(splits), shared_splits, source_groups, bundled)
        return loader
    return decorate


def dataset_info(name: str) -> DatasetInfo:
    """The declaration of dataset ``name`` (ConfigError listing the valid names)."""
    _register_all()
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[name]


def splits_share_images(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether the splits of dataset ``name`` (at ``root``) hold the same images."""
    info = dataset_info(name)
    if info.shared_splits is not None:
        return info.shared_splits
    folder = Path(root).expanduser() if root is not None else None
    return folder is None or not all((folder / s).is_dir() for s in info.splits)


DEFAULT_DATASET = "embedded"


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                 image_size: int | None = None, download: bool = False) -> ImageDataset:
    """Load dataset ``name`` (a key of :data:`DATASETS`) as an in-memory :class:`ImageDataset`.

    ``root`` is where to look first (required for ``image-folder``), ``split`` is "train" or "test",
    ``image_size`` resizes every image to ``image_size`` x ``image_size`` (Pillow, antialiased bicubic), and
    ``download=True`` lets the on-disk datasets fetch their official files when they are not found.
    """
    info = dataset_info(name)
    if not isinstance(split, str):
        raise ConfigError(f"split must be a string such as 'train' or 'test', got {split!r}")
    if info.bundled and (root is not None or download):
        what = "a data root (--data-root, data.root)" if root is not None else "download"
        raise ConfigError(f"dataset '{name}' ships inside the installed packages, so {what} does not apply to "
                          f"it; leave it out, or pick a dataset read from files (image-folder, fashion-mnist, cifar10)")
    check_size(image_size)
    return info.loader(root=root, split=split, image_size=image_size, download=download)


def _register_all() -> None:
    """Import every module of :mod:`gradaudit.data` (each loader registers itself), so a new dataset is one file."""
    import importlib
    import pkgutil

    import gradaudit.data as package

    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)


_register_all()

__all__ = ["DATASETS", "DEFAULT_DATASET", "DatasetInfo", "DatasetLoader", "dataset_info", "load_dataset",
           "register_dataset", "splits_share_images"]
