"""Pixel helpers shared by the loaders: Pillow resizing, HWC -> CHW stacking and channel statistics."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from gradaudit.errors import ConfigError

# Pillow widens the bicubic kernel when shrinking, so this is antialiased (Image.Resampling needs Pillow >= 9.1).
RESAMPLE = getattr(Image, "Resampling", Image).BICUBIC


def check_size(image_size: int | None) -> None:
    """Reject a non-positive or non-integer ``image_size``."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")


def center_square(img: Image.Image) -> Image.Image:
    """The largest centred square crop of ``img``."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def resize_pil(img: Image.Image, size: int) -> Image.Image:
    """Resize to ``size`` x ``size`` with antialiased bicubic resampling (no-op when already that size)."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), RESAMPLE)


def hwc_to_chw(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack uint8 ``[H, W]`` or ``[H, W, C]`` arrays into a uint8 tensor ``[N, C, H, W]``."""
    stacked = np.stack([a if a.ndim == 3 else a[:, :, None] for a in arrays])
    return torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))


def resize_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize a uint8 ``[N, C, H, W]`` tensor to ``[N, C, size, size]`` with Pillow (no-op when ``size`` is None
    or already matches)."""
    check_size(size)
    if size is None or tuple(images.shape[2:]) == (size, size):
        return images
    arr = images.permute(0, 2, 3, 1).numpy()
    out = np.empty((arr.shape[0], size, size, arr.shape[3]), dtype=np.uint8)
    for i, a in enumerate(arr):
        img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
        out[i] = np.asarray(resize_pil(img, size)).reshape(size, size, -1)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of a uint8 ``[N, C, H, W]`` tensor, in ``[0, 1]`` pixel units.

    A channel with zero spread gets std 1.0 so normalisation stays finite.
    """
    if images.numel() == 0:
        return (0.0,) * images.shape[1], (1.0,) * images.shape[1]
    x = images.to(torch.float64).div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    mean = x.mean(dim=1)
    std = x.std(dim=1, correction=0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)
