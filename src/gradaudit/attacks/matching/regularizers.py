"""Image priors added to the matching objective, looked up by name (one function + one registry entry each).

Every regularizer gets the candidate batch ``x`` (normalised, [B, C, H, W]) and a :class:`RegularizerContext`
and returns a scalar.

* ``tv`` - anisotropic total variation, mean |x(i+1,j) - x(i,j)| + mean |x(i,j+1) - x(i,j)| (the L1 form of the
  Inverting Gradients reference code).
* ``tv-squared`` - the squared form of the GIAS slides: mean of squared neighbour differences.
* ``bn`` - batch-norm statistics matching (Yin et al., CVPR 2021, GradInversion):
  sum_l w_l (||mu_l(x) - mu*_l||_2 + ||var_l(x) - var*_l||_2), w_0 = ``first_bn_weight`` (x10 by default).
  Targets are the private batch's statistics when the threat model grants them, otherwise the running
  statistics the server sent with the model.
* ``l2`` - image norm, mean x^2 (DeepInversion's l2 prior).
* ``z-norm`` - latent norm ||z||^2 / d averaged over the batch (GIAS's latent penalty, weight 1e-3 in the
  reference), for attacks that optimise a generator's latent z (``ctx.latent``; zero when there is none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ...errors import unknown_name


@dataclass
class RegularizerContext:
    bn_inputs: Sequence[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    bn_targets: Sequence[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    first_bn_weight: float = 10.0
    latent: torch.Tensor | None = None


Regularizer = Callable[[torch.Tensor, RegularizerContext], torch.Tensor]
#: name -> regularizer, filled by :func:`register_regularizer` on each function
REGULARIZERS: dict[str, Regularizer] = {}


def register_regularizer(name: str):
    """Decorator: the decorated ``regularizer(x, ctx) -> scalar`` is the regularizer ``name``."""
    def decorate(fn: Regularizer) -> Regularizer:
        REGULARIZERS[name] = fn
        return fn
    return decorate


@register_regularizer("tv")
def total_variation(x: torch.Tensor, ctx: RegularizerContext | None = None) -> torch.Tensor:
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


@register_regularizer("tv-squared")
def total_variation_squared(x: torch.Tensor, ctx: RegularizerContext | None = None) -> torch.Tensor:
    dx = ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()
    dy = ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean()
    return dx + dy


@register_regularizer("bn")
def bn_statistics(x: torch.Tensor, ctx: RegularizerContext) -> torch.Tensor:
    total = x.new_zeros(())
    for i, ((mu, var), (mu_t, var_t)) in enumerate(zip(ctx.bn_inputs, ctx.bn_targets)):
        w = ctx.first_bn_weight if i == 0 else 1.0
        total = total + w * ((mu - mu_t).norm() + (var - var_t).norm())
    return total


@register_regularizer("l2")
def image_norm(x: torch.Tensor, ctx: RegularizerContext | None = None) -> torch.Tensor:
    return (x ** 2).mean()


@register_regularizer("z-norm")
def latent_norm(x: torch.Tensor, ctx: RegularizerContext | None = None) -> torch.Tensor:
    if ctx is None or ctx.latent is None:
        return x.new_zeros(())
    return (ctx.latent ** 2).mean()


def get_regularizer(name: str) -> Regularizer:
    if name not in REGULARIZERS:
        raise unknown_name("regularizer", name, REGULARIZERS)
    return REGULARIZERS[name]
