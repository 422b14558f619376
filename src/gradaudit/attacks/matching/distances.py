"""Distances between a candidate update g(x) and the observed update g*, over all parameter tensors.

* ``l2`` (Zhu et al. 2019, DLG): sum_l ||g_l - g*_l||^2.
* ``cosine`` (Geiping et al. 2020, Inverting Gradients; the global form GIAS uses):
  1 - <g, g*> / (||g|| ||g*||) over all layers concatenated.
* ``reweighted-cosine`` (seed 002, Appendix F): layers with large gradients overshadow the rest, so each layer
  is divided by its target norm first, g_l / ||g*_l||, then the global cosine is taken.

Each takes two equally ordered sequences of tensors and returns a scalar; all are differentiable twice.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ...errors import unknown_name

Distance = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], torch.Tensor]
_EPS = 1e-12
#: name -> distance, filled by :func:`register_distance` on each function
DISTANCES: dict[str, Distance] = {}


def register_distance(name: str):
    """Decorator: the decorated ``distance(g, target) -> scalar`` is the distance ``name``."""
    def decorate(fn: Distance) -> Distance:
        DISTANCES[name] = fn
        return fn
    return decorate


@register_distance("l2")
def l2_distance(g: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(((a - b) ** 2).sum() for a, b in zip(g, target))


@register_distance("cosine")
def cosine_distance(g: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    dot = sum((a * b).sum() for a, b in zip(g, target))
    gn = sum((a * a).sum() for a in g)
    tn = sum((b * b).sum() for b in target)
    return 1 - dot / (gn.clamp_min(_EPS).sqrt() * tn.clamp_min(_EPS).sqrt())


@register_distance("reweighted-cosine")
def reweighted_cosine_distance(g: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    norms = [b.norm().clamp_min(_EPS) for b in target]
    return cosine_distance([a / n for a, n in zip(g, norms)], [b / n for b, n in zip(target, norms)])



def get_distance(name: str) -> Distance:
    if name not in DISTANCES:
        raise unknown_name("distance", name, DISTANCES)
    return DISTANCES[name]
