"""DP-SGD (Abadi et al. 2016; seed 002 section 5): per-sample clipping, then Gaussian noise on the sum.

For a batch of B samples with per-sample gradients g_j (over all parameters together),

    g~ = (1/B) [ sum_j g_j * min(1, C / ||g_j||_2)  +  N(0, sigma^2 C^2 I) ],

with C the clipping norm and sigma the noise multiplier (noise std / C). Each sample moves the sum by at most C
in L2, so the sum is a Gaussian mechanism of sensitivity C; its (epsilon, delta) guarantee comes from the RDP
accountant of the sampled Gaussian mechanism in :mod:`gradaudit.defenses.accountant`
(:meth:`DPSGD.epsilon`). Within one federated client the whole private batch is used, so the sampling rate is 1
and one FedSGD update is one full-batch Gaussian mechanism (RDP alpha / (2 sigma^2)); FedAvg with K local steps
composes K of them.

Because it needs the per-sample gradients, DP-SGD is not a transform of the mean update: it has
``per_sample = True`` and a :meth:`DPSGD.privatize` method, and the :class:`~gradaudit.threat.Client` calls it
in place of taking the batch mean (FedSGD), or at every local step (FedAvg: the shared update is then
lr * sum_k g~_k). Per-sample gradients are computed with ``torch.func`` (``functional_call`` + ``vmap(grad)``);
batch norm mixes the samples of a batch, so per-sample gradients are undefined for models with BatchNorm layers
and DP-SGD refuses them (Opacus has the same restriction).

What the attacker knows: C, sigma, delta and B (public, recorded as ``dpsgd:C=1,sigma=1.1`` and in
``extras["dp_epsilon"]``, ``extras["dp_delta"]``), but neither the noise draw nor which samples were clipped.
Seed 002 analyses DP-SGD theoretically (Sec. 3.2, Table 1: clipping alone does not change the bound, it scales
the noise) and sweeps no DP-SGD strengths in its experiments; a reference setting is Abadi et al.'s C = 1,
sigma = 1.1 (spec ``dpsgd:1,1.1``), swept against the gradient-noise levels of seed 002 (sigma C / B in
{1e-3, 1e-2, 1e-1}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.layers import has_batchnorm
from .base import fmt, register_defense
from . import accountant


def per_sample_gradients(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """grad_theta CE(f_theta(x_j), y_j) for every sample j: a dict of tensors of shape [B, *param.shape].

    The model is evaluated in its current mode on one sample at a time (``vmap`` over the batch), at its current
    parameters. Models with batch norm are refused (their per-sample gradients are not defined).
    """
    if has_batchnorm(model):
        raise ConfigError("DP-SGD needs per-sample gradients, which are not defined for a model with batch norm; "
                          "use a model without BatchNorm layers (Opacus has the same restriction)")
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(params, x, labels)


@register_defense("dpsgd", family="differential privacy", parameters=("C", "sigma", "delta"),
                  example="dpsgd:1.0,1.1 (clip C, noise multiplier sigma[, delta])", counts=(2, 3),
                  per_sample=True, needs="per-sample gradients: no batch norm", strength="sigma")
@dataclass(frozen=True)
class DPSGD:
    clip: float
    noise_multiplier: float
    delta: float = 1e-5

    per_sample: ClassVar[bool] = True  # the Client feeds it per-sample gradients instead of the mean update

    def __post_init__(self) -> None:
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ConfigError(f"DP-SGD clipping norm must be finite and > 0, got {self.clip}")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError(f"DP-SGD noise multiplier must be finite and >= 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"DP-SGD delta must be in (0, 1), got {self.delta}")

    def privatize(self, per_sample: dict[str, torch.Tensor], generator: torch.Generator | None = None
                  ) -> dict[str, torch.Tensor]:
        """Clip each sample's gradient (all tensors together) to norm <= C, sum, add N(0, (sigma C)^2), divide by B."""
        if not per_sample:
            raise ConfigError("DP-SGD got no per-sample gradients")
        sizes = {g.shape[0] for g in per_sample.values()}
        if len(sizes) != 1:
            raise ConfigError(f"per-sample gradients disagree on the batch size: {sorted(sizes)}")
        b = sizes.pop()
        if b < 1:
            raise ConfigError("DP-SGD needs at least one sample")
        norms = torch.sqrt(sum(g.detach().reshape(b, -1).double().pow(2).sum(1) for g in per_sample.values()))
        factor = torch.where(norms > self.clip, self.clip / norms.clamp_min(1e-300), torch.ones_like(norms))
        out = {}
        for k, g in per_sample.items():
            f = factor.to(device=g.device, dtype=g.dtype).view(b, *([1] * (g.dim() - 1)))
            total = (g * f).sum(0)
            if self.noise_multiplier > 0:
                noise = torch.randn(total.shape, generator=generator, dtype=total.dtype).to(total.device)
                total = total + (self.noise_multiplier * self.clip) * noise
            out[k] = total / b
        return out

    def __call__(self, update, generator=None):
        raise ConfigError("DP-SGD acts on per-sample gradients, not on a mean update: give it to a Client "
                          "(transforms=[DPSGD(...)]), or call privatize() on per-sample gradients")

    def epsilon(self, steps: int, sample_rate: float) -> float:
        """epsilon of the (epsilon, self.delta)-DP guarantee after ``steps`` steps at Poisson rate ``sample_rate``."""
        return accountant.epsilon(self.noise_multiplier, sample_rate, steps, self.delta)

    def describe(self) -> str:
        extra = "" if self.delta == 1e-5 else f",delta={fmt(self.delta)}"
        return f"dpsgd:C={fmt(self.clip)},sigma={fmt(self.noise_multiplier)}{extra}"
