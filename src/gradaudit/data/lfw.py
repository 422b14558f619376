"""The "lfw" dataset: scikit-image's bundled LFW subset, 200 grayscale 25x25 crops, offline.

``skimage.data.lfw_subset()`` (file ``skimage/data/lfw_subset.npy`` inside the wheel; no download) gives 100 face
crops from Labeled Faces in the Wild followed by 100 non-face crops from the same photos' backgrounds. Labels
follow that order: 0 = "face" (first 100), 1 = "non-face" (last 100). One channel; the float pixels in [0, 1] are
rounded to uint8. ``image_size`` resizes (antialiased bicubic); normalisation mean/std are computed from the set.
It is an evaluation set: ``split="train"`` and ``split="test"`` both return all 200 images.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from gradaudit.data._pixels import channel_stats, resize_images
from gradaudit.data.base import ImageDataset
from gradaudit.errors import DataNotFoundError, unknown_name
from gradaudit.data.registry import register_dataset

NAME = "lfw"
CLASSES = ["face", "non-face"]
SPLITS = ("train", "test")


@register_dataset("lfw", shared_splits=True, bundled=True)
def load(root: str | os.PathLike | None = None, split: str = "train", image_size: int | None = None,
         download: bool = False) -> ImageDataset:
    """Load the 200-image LFW face / non-face subset (``root`` and ``download`` are ignored)."""
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    try:
        from skimage.data import lfw_subset

        faces = np.asarray(lfw_subset(), dtype=np.float64)
    except (ImportError, OSError, ValueError) as exc:
        raise DataNotFoundError(f"lfw: scikit-image's bundled lfw_subset could not be loaded ({exc}); "
                                "reinstall scikit-image") from exc
    pixels = np.clip(np.rint(faces * 255.0), 0, 255).astype(np.uint8)
    images = resize_images(torch.from_numpy(pixels).unsqueeze(1).contiguous(), image_size)
    half = len(pixels) // 2
    labels = torch.cat([torch.zeros(half, dtype=torch.int64), torch.ones(len(pixels) - half, dtype=torch.int64)])
    mean, std = channel_stats(images)
    return ImageDataset(NAME, images, labels, list(CLASSES), mean, std)
