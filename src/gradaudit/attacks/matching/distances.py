"""Distances between a candidate update g(x) and the observed update g*, over all parameter tensors.

* ``l2`` (Zhu et al. 2019, DLG): sum_l ||g_l - g*_l||^2.
* ``cosine`` (Geiping et al. 2020, Inverting Gradients; the global form GIAS uses):
  1 - <g, g*> / (||g|| ||g*||) over all layers concatenated.
* ``reweighted-cosine`` (seed 002, Appendix F): layers with large gradients overshadow the rest, so each layer
  is divided by its target norm first, g_l / ||g*_l||, then the global cosine is taken.

Each takes two equally ordered sequences of tensors and returns a scalar; all are differentiable twice.

The two cosines are functions of three per-tensor statistics, dot_l = <g_l, g*_l>, sq_l = ||g_l||^2 and
tsq_l = ||g*_l||^2 (the reweighted form divides all three by tsq_l). Their *statistic forms* take those [L]
vectors: the matching objective computes them once per evaluation and reads off the fitted distance, the global
cosine it monitors and the held-out cosine from the same numbers, with the target's norms computed once per
attack (on ResNet-18 the distances are a memory-bound sweep over 11 M gradient entries, done three times before).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ...errors import unknown_name

Distance = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], torch.Tensor]
#: (dot [L], sq [L], tsq [L]) -> scalar: a distance from its per-tensor statistics (module docstring)
StatisticForm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_EPS = 1e-12
#: name -> distance, filled by :func:`register_distance` on each function
DISTANCES: dict[str, Distance] = {}
#: name -> the distance's statistic form, for the distances that have one (:func:`register_distance`)
STATISTIC_FORMS: dict[str, StatisticForm] = {}


def register_distance(name: str, statistics: StatisticForm | None = None):
    """Decorator: the decorated ``distance(g, target) -> scalar`` is the distance ``name``; ``statistics`` is
    the same distance as a function of the per-tensor statistics, where it has one."""
    def decorate(fn: Distance) -> Distance:
        DISTANCES[name] = fn
        if statistics is not None:
            STATISTIC_FORMS[name] = statistics
        return fn
    return decorate


def squared_norms(g: Sequence[torch.Tensor]) -> torch.Tensor:
    """[L]: ||g_l||^2 per tensor."""
    return torch.stack([(a * a).sum() for a in g])


class _DotAndSquare(torch.autograd.Function):
    """(<a, b>, ||a||^2) of two equally shaped tensors as two fused reductions, without the element-wise products
    that ``(a * b).sum()`` writes out, and their gradient d/da = gdot b + 2 gsq a in one fused pass (autograd of
    the products takes two to three). On ResNet-18's 11 M gradient entries the statistics' forward and backward
    take about half the time. The backward is made of differentiable operations, so the distances stay
    differentiable twice; ``generate_vmap_rule`` lets a vmapped population use it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a1, b1 = a.reshape(-1), b.reshape(-1)
        return torch.dot(a1, b1), torch.dot(a1, a1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, gdot: torch.Tensor, gsq: torch.Tensor):
        a, b = ctx.saved_tensors
        grad_a = torch.addcmul(b * gdot, a, 2 * gsq) if ctx.needs_input_grad[0] else None
        return grad_a, (a * gdot if ctx.needs_input_grad[1] else None)


def tensor_statistics(g: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(dot [L], sq [L]): <g_l, g*_l> and ||g_l||^2 per tensor (tsq, the target's, is computed once by callers)."""
    dot, sq = zip(*[_DotAndSquare.apply(a, b) for a, b in zip(g, target)])
    return torch.stack(dot), torch.stack(sq)


def cosine_from_statistics(dot: torch.Tensor, sq: torch.Tensor, tsq: torch.Tensor) -> torch.Tensor:
    """1 - sum dot / sqrt(sum sq * sum tsq): the global cosine distance over the tensors of the vectors."""
    return 1 - dot.sum() / (sq.sum().clamp_min(_EPS).sqrt() * tsq.sum().clamp_min(_EPS).sqrt())


def reweighted_cosine_from_statistics(dot: torch.Tensor, sq: torch.Tensor, tsq: torch.Tensor) -> torch.Tensor:
    """The reweighted cosine: every statistic of tensor l divided by ||g*_l||^2 (the square of its clamped norm)."""
    w = 1 / tsq.clamp_min(_EPS * _EPS)
    return cosine_from_statistics(dot * w, sq * w, tsq * w)


@register_distance("l2")
def l2_distance(g: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(((a - b) ** 2).sum() for a, b in zip(g, target))


@register_distance("cosine", statistics=cosine_from_statistics)
def cosine_distance(g: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    return cosine_from_statistics(*tensor_statistics(g, target), squared_norms(target))


@register_distance("reweighted-cosine", statistics=reweighted_cosine_from_statistics)
def reweighted_cosine_distance(g: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    norms = [b.norm().clamp_min(_EPS) for b in target]
    return cosine_distance([a / n for a, n in zip(g, norms)], [b / n for b, n in zip(target, norms)])



def get_distance(name: str) -> Distance:
    if name not in DISTANCES:
        raise unknown_name("distance", name, DISTANCES)
    return DISTANCES[name]
