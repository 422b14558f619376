"""Gradient dropout (seed 002 section 5): zero each entry of the update independently with probability p.

    g_i <- m_i g_i,    m_i ~ Bernoulli(1 - p) i.i.d.,

without rescaling, as in seed 002 section 5 (``rescale=True`` divides the kept entries by 1 - p, which makes the
update unbiased: E[m_i g_i / (1 - p)] = g_i). The mask is drawn from the client's generator, so a seeded client
is reproducible. p in [0, 1).

What the attacker knows: p (public, recorded as ``dropout:p``, or ``dropout-rescaled:p``) and, from the update
itself, which entries were dropped (the zeros; a true gradient entry is almost never exactly 0), but not their
values. Seed 002 sweeps p in {0.3, 0.5, 0.7, 0.9}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import fmt, register_defense


@register_defense("dropout", family="dropout", parameters=("p",), example="dropout:0.5")
@register_defense("dropout-rescaled", family="dropout", parameters=("p",), example="dropout-rescaled:0.5",
                  rescale=True)
@dataclass(frozen=True)
class GradientDropout:
    p: float
    rescale: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.p < 1:
            raise ConfigError(f"dropout probability p must be in [0, 1), got {self.p}")

    def __call__(self, update, generator=None):
        out = {}
        for k, v in update.items():
            keep = (torch.rand(v.shape, generator=generator) >= self.p).to(device=v.device, dtype=v.dtype)
            out[k] = v * keep / (1 - self.p) if self.rescale else v * keep
        return out

    def describe(self) -> str:
        return f"dropout{'-rescaled' if self.rescale else ''}:{fmt(self.p)}"
