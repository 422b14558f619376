"""Shared fixtures: single-threaded torch (small tensors; immune to OpenMP spin-waits on a busy 2-core box)
and tiny victim models in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradaudit.models import ModelSpec, build_model


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _make_model(name: str, shape, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(name, 10, tuple(shape), kwargs))


@pytest.fixture(scope="session")
def make_model():
    """make_model(name, (C, H, W), seed=0, **kwargs): a registry model with seeded initial weights."""
    return _make_model


@pytest.fixture(scope="session")
def tiny_conv():
    torch.manual_seed(0)
    return TinyConv()


class TinyConv(nn.Module):
    """P = 9 + 1 + 4*10 + 10 = 60 parameters < D = 64 inputs: the L2 Hessian 2 J^T J must be singular."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.sigmoid(self.pool(self.conv(x))).flatten(1))
