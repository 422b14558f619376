"""Your own images: one sub-folder per class, ``root/<class_name>/*.{png,jpg,jpeg,bmp,webp}``.

Classes are the sub-folder names in sorted order (label = position); files in a class are read in sorted
name order; hidden entries are ignored. If ``root/<split>/`` exists and itself holds class folders (the usual
``root/train/<class>/...`` layout), it is used instead of ``root``. Every image is centre-cropped to a square
and resized (Pillow, antialiased bicubic) to ``image_size`` x ``image_size`` (default 32). Images are RGB,
or 1-channel grayscale when every file is grayscale. Normalisation constants are computed from the images.
``root`` is required; nothing is downloaded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gradaudit.data._pixels import center_square, channel_stats, check_size, hwc_to_chw, resize_pil
from gradaudit.data.base import CorruptDataError, ImageDataset
from gradaudit.errors import ConfigError, DataNotFoundError
from gradaudit.data.registry import register_dataset

NAME = "image-folder"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_SIZE = 32
_GRAY_MODES = ("1", "L", "LA")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in EXTENSIONS)


def _open(path: Path) -> Image.Image:
    """Read an image fully; 16/32-bit grayscale is scaled down to 8-bit "L" (Pillow would clip it).

    An image larger than Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, about 89 million
    pixels) is refused before it is decoded, as is anything Pillow cannot read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                if img.mode.startswith("I"):
                    wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
                    return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
                return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CorruptDataError(f"{path}: image too large to be decoded safely (a decompression bomb?): "
                               f"{' '.join(str(exc).split())}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CorruptDataError(f"{path}: cannot read image ({' '.join(str(exc).split())})") from None


@register_dataset("image-folder", shared_splits=None)
def load(root: str | os.PathLike | None = None, split: str = "train", image_size: int | None = None,
         download: bool = False) -> ImageDataset:
    """Load the class-per-folder images under ``root`` as an :class:`ImageDataset` (``download`` is ignored)."""
    if root is None:
        raise ConfigError("dataset 'image-folder' needs a root folder laid out as root/<class_name>/<image files> "
                          "(pass root=... or --data-root)")
    check_size(image_size)
    size = image_size or DEFAULT_SIZE
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"image folder not found: looked for a folder at {folder}")
    if split and (folder / split).is_dir() and _subdirs(folder / split):
        folder = folder / split
    class_dirs = _subdirs(folder)
    if not class_dirs:
        raise DataNotFoundError(f"image folder {folder} has no class sub-folders; expected "
                                f"{folder}/<class_name>/<image>{{{','.join(EXTENSIONS)}}}")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        found = _images_in(d)
        if not found:
            raise DataNotFoundError(f"class folder {d} has no images with extensions {', '.join(EXTENSIONS)}")
        files += [(p, label) for p in found]
    opened = [_open(p) for p, _ in files]
    gray = all(img.mode in _GRAY_MODES for img in opened)
    mode = "L" if gray else "RGB"
    arrays = [np.asarray(resize_pil(center_square(img.convert(mode)), size)) for img in opened]
    images = hwc_to_chw(arrays)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    mean, std = channel_stats(images)
    return ImageDataset(NAME, images, labels, [d.name for d in class_dirs], mean, std)
