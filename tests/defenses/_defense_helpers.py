"""Shared fixtures for the defense tests: tiny models, batches and a plain client."""

from __future__ import annotations

import torch
from torch import nn

from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import DataSpec

SHAPE = (3, 16, 16)
DATA = DataSpec("toy", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
LENET = ModelSpec("lenet", 10, SHAPE)
MLP = ModelSpec("mlp", 10, SHAPE, {"width": 32})
CONVNET = ModelSpec("convnet", 10, SHAPE, {"width": 4})


def model(spec: ModelSpec, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec)


def batch(b: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, *SHAPE, generator=g), torch.randint(0, 10, (b,), generator=g)


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(DATA.mean).view(1, 3, 1, 1)) / torch.tensor(DATA.std).view(1, 3, 1, 1)


def random_update(seed: int = 0, scales=(1.0, 1.0, 1.0)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 3, 5, 5), (8,), (10, 32)]
    return {f"t{i}": s * torch.randn(shape, generator=g) for i, (shape, s) in enumerate(zip(shapes, scales))}
