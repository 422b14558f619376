"""The in-memory image dataset every loader returns.

An :class:`ImageDataset` holds a whole (small) labelled image set as one uint8 tensor ``[N, C, H, W]`` plus the
per-channel normalisation constants that belong to it. Models see ``normalize(batch)``; attacks reconstruct in
``[0, 1]`` pixel space and metrics compare there, so the constants travel with the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gradaudit.errors import ConfigError, GradauditError


class CorruptDataError(GradauditError, ValueError):
    """A dataset file exists but its contents are malformed, truncated or unsafe to read."""


def _as_index(indices) -> torch.Tensor:
    """Turn an int or a sequence/array/tensor of ints into a 1-D int64 index tensor."""
    if isinstance(indices, slice):
        raise ConfigError("dataset indices must be integers or a sequence of integers, not a slice")
    idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise ConfigError(f"dataset indices must be integers, got dtype {idx.dtype}")
    return idx.reshape(-1).to(torch.int64)


@dataclass(eq=False, repr=False)
class ImageDataset:
    """A labelled image set held in memory.

    Attributes:
        name: the registry name of the dataset it came from (e.g. ``"cifar10"``).
        images: uint8 tensor ``[N, C, H, W]`` (C is 1 or 3).
        labels: int64 tensor ``[N]`` with values in ``[0, num_classes)``.
        classes: class names; ``len(classes)`` is the number of classes.
        mean, std: per-channel normalisation constants in ``[0, 1]`` pixel units, one per channel.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _mean_t: torch.Tensor = field(init=False, repr=False)
    _std_t: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        where = f"dataset '{self.name}'"
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            got = self.images.dtype if isinstance(self.images, torch.Tensor) else type(self.images).__name__
            raise ConfigError(f"{where}: images must be a torch.uint8 tensor, got {got}")
        if self.images.dim() != 4 or self.images.shape[1] not in (1, 3):
            raise ConfigError(f"{where}: images must have shape [N, C, H, W] with C in (1, 3), "
                              f"got {tuple(self.images.shape)}")
        if min(self.images.shape[2:]) < 1:
            raise ConfigError(f"{where}: images have empty spatial size {tuple(self.images.shape[2:])}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64:
            got = self.labels.dtype if isinstance(self.labels, torch.Tensor) else type(self.labels).__name__
            raise ConfigError(f"{where}: labels must be a torch.int64 tensor, got {got}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ConfigError(f"{where}: labels must have shape [N] = [{self.images.shape[0]}], "
                              f"got {tuple(self.labels.shape)}")
        self.classes = list(self.classes)
        if not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise ConfigError(f"{where}: classes must be a non-empty list of names")
        if self.labels.numel():
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.classes):
                raise ConfigError(f"{where}: labels must lie in [0, {len(self.classes) - 1}] "
                                  f"({len(self.classes)} classes), found values in [{lo}, {hi}]")
        channels = self.images.shape[1]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ConfigError(f"{where}: mean and std need one value per channel ({channels}), "
                              f"got {len(self.mean)} and {len(self.std)}")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError(f"{where}: mean must be finite and std positive, got mean={self.mean} std={self.std}")
        self._mean_t = torch.tensor(self.mean, dtype=torch.float64).view(-1, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float64).view(-1, 1, 1)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        c, h, w = self.shape
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, shape=({c}, {h}, {w}), "
                f"classes={self.num_classes}, mean={self.mean}, std={self.std})")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``indices`` as float32 in ``[0, 1]`` ``[B, C, H, W]`` and their int64 labels ``[B]``."""
        idx = _as_index(indices)
        return self.images[idx].to(torch.float32) / 255.0, self.labels[idx].clone()

    def _stats_like(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() < 3 or x.shape[-3] != self.images.shape[1]:
            raise ConfigError(f"dataset '{self.name}': expected images [..., {self.images.shape[1]}, H, W], "
                              f"got {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return self._mean_t.to(x.device, dtype), self._std_t.to(x.device, dtype)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel, for ``x`` in ``[0, 1]`` shaped ``[..., C, H, W]``."""
        mean, std = self._stats_like(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: ``x * std + mean``."""
        mean, std = self._stats_like(x)
        return x * std + mean

    def subset(self, indices) -> ImageDataset:
        """A new dataset with only ``indices`` (same classes and normalisation constants)."""
        idx = _as_index(indices)
        return ImageDataset(self.name, self.images[idx].clone(), self.labels[idx].clone(), list(self.classes),
                            self.mean, self.std)
