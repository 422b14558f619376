"""The "embedded" dataset: a small offline colour natural-image set built from photos inside installed wheels.

Sources (each photo is one class; label = its position below, class name = the photo's name):

* scikit-image ``skimage/data/``: astronaut, coffee, chelsea (a cat), rocket, motorcycle (the left stereo view).
  These are bundled in the wheel (no download); grayscale or non-photo samples are not used.
* scikit-learn ``sklearn/datasets/images/``: china, flower (``load_sample_images``).
* matplotlib ``mpl-data/sample_data/``: grace_hopper.

From every photo eight fixed square crops are taken (the full centre square, centred 70% and 45% squares, the
four corner 60% squares and an upper-centre 55% square) and resized with Pillow's antialiased bicubic filter to
``image_size`` x ``image_size`` (default 32), giving 8 photos x 8 crops = 64 RGB images. Files are read and
decoded directly with Pillow and nothing random is involved, so a build gives the same bytes every time for a
given installation; nothing is cached on disk. Normalisation mean/std are computed from the set itself.

It is an evaluation set (the images to reconstruct), so ``split="train"`` and ``split="test"`` both return
all 64 images.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gradaudit.data._pixels import channel_stats, check_size, hwc_to_chw, resize_pil
from gradaudit.data.base import ImageDataset
from gradaudit.errors import DataNotFoundError, unknown_name
from gradaudit.data.registry import register_dataset

NAME = "embedded"
DEFAULT_SIZE = 32
SPLITS = ("train", "test")

# (class name, top-level package, path of the photo inside the installed package)
PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "skimage", "data/astronaut.png"),
    ("coffee", "skimage", "data/coffee.png"),
    ("chelsea", "skimage", "data/chelsea.png"),
    ("rocket", "skimage", "data/rocket.jpg"),
    ("motorcycle", "skimage", "data/motorcycle_left.png"),
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
    ("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)

# Square crops as (horizontal alignment, vertical alignment, side as a fraction of the photo's short side):
# the box sits at left = ax * (W - side), top = ay * (H - side), so it always lies inside the photo.
CROPS: tuple[tuple[float, float, float], ...] = (
    (0.5, 0.5, 1.0), (0.5, 0.5, 0.7), (0.5, 0.5, 0.45),
    (0.0, 0.0, 0.6), (1.0, 0.0, 0.6), (0.0, 1.0, 0.6), (1.0, 1.0, 0.6),
    (0.5, 0.25, 0.55),
)


def _package_file(package: str, relpath: str) -> Path | None:
    """Path of ``relpath`` inside installed ``package``, found without importing it (None when missing)."""
    spec = importlib.util.find_spec(package)
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base) / relpath
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[tuple[str, Image.Image], ...]:
    """Decode the source photos once per process (RGB); photos missing from this installation are skipped."""
    found = []
    for name, package, relpath in PHOTOS:
        path = _package_file(package, relpath)
        if path is None:
            warnings.warn(f"embedded dataset: {package}/{relpath} is not installed; class '{name}' skipped",
                          stacklevel=3)
            continue
        with Image.open(path) as img:
            found.append((name, img.convert("RGB")))
    if len(found) < 2:
        raise DataNotFoundError("embedded dataset: the sample photos shipped with scikit-image, scikit-learn and "
                                "matplotlib were not found; reinstall those packages")
    return tuple(found)


def crop_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) boxes of :data:`CROPS` for a ``width`` x ``height`` photo."""
    short = min(width, height)
    boxes = []
    for ax, ay, frac in CROPS:
        side = max(1, round(frac * short))
        left, top = round(ax * (width - side)), round(ay * (height - side))
        boxes.append((left, top, left + side, top + side))
    return boxes


@register_dataset("embedded", shared_splits=True, source_groups="label", bundled=True)
def load(root: str | os.PathLike | None = None, split: str = "train", image_size: int | None = None,
         download: bool = False) -> ImageDataset:
    """Build the embedded set (``root`` and ``download`` are ignored: it needs no files of its own)."""
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    check_size(image_size)
    size = image_size or DEFAULT_SIZE
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    photos = _photos()
    for label, (_, photo) in enumerate(photos):
        for box in crop_boxes(*photo.size):
            arrays.append(np.asarray(resize_pil(photo.crop(box), size)))
            labels.append(label)
    images = hwc_to_chw(arrays)
    mean, std = channel_stats(images)
    return ImageDataset(NAME, images, torch.tensor(labels, dtype=torch.int64), [n for n, _ in photos], mean, std)
