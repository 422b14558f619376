"""Gradient clipping of the whole update (seed 002 section 5): g <- g * min(1, C / ||g||_2).

The norm is the global L2 norm over all tensors of the update, ||g||_2 = sqrt(sum_k ||g_k||_F^2); the direction
is unchanged, only updates longer than C are shortened to length exactly C. C > 0 and finite.

What the attacker knows: C (public, recorded as ``clip:C``). Clipping only rescales, so an attacker that
matches directions (cosine distance, as Inverting Gradients does) is unaffected; an L2-matching attacker sees a
gradient of the wrong scale. Seed 002 sweeps C in {2, 4, 8} (or quantiles of observed norms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import fmt, register_defense


def global_norm(update: dict[str, torch.Tensor]) -> torch.Tensor:
    """sqrt(sum over tensors of the squared Frobenius norms)."""
    return torch.sqrt(sum((v.detach().double() ** 2).sum() for v in update.values()))


@register_defense("clip", family="clipping", parameters=("C",), example="clip:4")
@dataclass(frozen=True)
class GradientClipping:
    C: float

    def __post_init__(self) -> None:
        if not (self.C > 0 and math.isfinite(self.C)):
            raise ConfigError(f"clipping norm C must be finite and > 0, got {self.C}")

    def __call__(self, update, generator=None):
        norm = float(global_norm(update))
        scale = min(1.0, self.C / norm) if norm > 0 else 1.0
        return {k: v * scale for k, v in update.items()}

    def describe(self) -> str:
        return f"clip:{fmt(self.C)}"
