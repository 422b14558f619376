"""Gaussian gradient noise (seed 002 section 5): g <- g + N(0, sigma^2 I), independently per entry.

The attacker knows sigma but not the noise draw; it matches the noisy update as if it were clean.
Seed 002 sweeps sigma in {1e-3, 1e-2, 1e-1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import fmt, register_defense


@register_defense("noise", family="noise", parameters=("sigma",), example="noise:0.01")
@dataclass(frozen=True)
class GaussianNoise:
    sigma: float

    def __post_init__(self) -> None:
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ConfigError(f"noise sigma must be finite and >= 0, got {self.sigma}")

    def __call__(self, update, generator=None):
        return {k: v + self.sigma * torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device)
                for k, v in update.items()}

    def describe(self) -> str:
        return f"noise:{fmt(self.sigma)}"
