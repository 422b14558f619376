"""Gradient pruning (seed 002 section 5; Zhu et al. 2019 Sec. 5): zero the small-magnitude entries.

With scope ``"layer"``, for each tensor g of n entries the floor(p n) entries of smallest |g| are set to 0 and the
other n - floor(p n) (the top (1 - p) fraction by magnitude) are kept unchanged:

    g_i <- g_i * 1[|g_i| >= q_p(|g|)],    q_p = the p-quantile of |g| over the tensor,

with ties at the threshold broken so that exactly n - floor(p n) entries survive. With scope ``"global"`` the
quantile is taken over all entries of all tensors together (large layers then lose more than small ones).
p = 0 is the identity; p in [0, 1).

What the attacker knows: p and the scope (public, recorded as ``prune:p`` / ``prune-global:p``), and, from the
update itself, which entries survived (the zeros), so it can match only the kept coordinates.
Seed 002 sweeps p in {0.3, 0.5, 0.7, 0.9, 0.99}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import fmt, register_defense


def _keep_mask(magnitude: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask (same shape) of the n - floor(p n) largest entries of a flat or shaped magnitude tensor."""
    flat = magnitude.reshape(-1)
    n = flat.numel()
    pruned = min(n, math.floor(p * n + 1e-9))  # 1e-9 guards p n = 9 computed as 8.999...
    keep = n - pruned
    mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.view(magnitude.shape)


@register_defense("prune", family="pruning", parameters=("p",), example="prune:0.9", scope="layer")
@register_defense("prune-global", family="pruning", parameters=("p",), example="prune-global:0.9", scope="global")
@dataclass(frozen=True)
class GradientPruning:
    p: float
    scope: str = "layer"

    def __post_init__(self) -> None:
        if not 0 <= self.p < 1:
            raise ConfigError(f"pruning fraction p must be in [0, 1), got {self.p}")
        if self.scope not in ("layer", "global"):
            raise ConfigError(f"pruning scope must be 'layer' or 'global', got '{self.scope}'")

    def __call__(self, update, generator=None):
        if self.p == 0:
            return {k: v.clone() for k, v in update.items()}
        if self.scope == "layer":
            return {k: v * _keep_mask(v.abs(), self.p) for k, v in update.items()}
        names = list(update)
        flat = torch.cat([update[k].detach().abs().reshape(-1) for k in names])
        mask = _keep_mask(flat, self.p)
        out, start = {}, 0
        for k in names:
            n = update[k].numel()
            out[k] = update[k] * mask[start:start + n].view(update[k].shape)
            start += n
        return out

    def describe(self) -> str:
        return f"prune{'-global' if self.scope == 'global' else ''}:{fmt(self.p)}"
