"""Trap weights: the malicious block of Boenisch et al., a sparse-firing ReLU layer in front of a base network.

Boenisch, Dziedzic, Schuster, Shamsabadi, Shumailov, Papernot, "When the Curious Abandon Honesty: Federated
Learning Is Not Private", IEEE EuroS&P 2023 (arXiv:2112.02918). Like Robbing the Fed's imprint block
(:class:`gradaudit.models.malicious.ImprintedModel`), the server prepends a small block to an ordinary network:

    x  (the normalised input, N = C*H*W values)
    z_i = relu(w_i . x + b_i),              i = 0 .. K-1           (``trap``: Linear(N -> K) + ReLU)
    x' = x + sum_i u_i z_i                                          (``trap_out``: Linear(K -> N), bias 0)
    f(x) = base(x')

but here every row w_i is a *different* random direction, and the row is a trap: its bias is set so that
the neuron fires (w_i . x + b_i > 0) for only a small fraction ``rate`` of the inputs. For the mean gradient
of a batch of B samples, with c_ij = u_i . dL/dx'_j the derivative of sample j's loss with respect to z_ij,

    dL/dW_i = (1/B) sum_{j: row i fires for x_j} c_ij x_j,      dL/db_i = (1/B) sum_{j: row i fires} c_ij,

so a row that fires for exactly one sample j gives dW_i / db_i = x_j exactly: c_ij cancels. Unlike the
imprint block, no two rows need to share anything, and there is no difference of rows to take: each row is
its own bin, and a sample can be isolated by any of the K rows.

How often a sample is isolated. If row i fires for each sample independently with probability r, a row
isolates a *given* sample with probability r (1 - r)^(B-1) (at most about 1/(e B), at r = 1/B), so a sample is
recovered with probability 1 - (1 - r (1 - r)^(B-1))^K ~ 1 - exp(-K r (1 - r)^(B-1)). With r = 1/B this is
1 - exp(-K / (e B)): 52% at K = 2B, 77% at 4B, 95% at 8B. Robbing the Fed's imprint isolates a sample with
probability (1 - 1/K)^(B-1) ~ exp(-B / K): 61%, 78%, 88%. The trap block needs more neurons than the imprint
block for the same yield below K ~ 4B and wins above it (its misses fall exponentially in K, the imprint's
like B / K). On real images the rows do not fire independently (an atypical image fires many rows, a typical
one few), which costs the trap block more: see ``benchmarks/beyond_malicious.py`` for the measurement.

How a row is made to fire rarely. Two constructions:

* ``rate`` (default 0.02): w_i is a random Gaussian direction of unit norm (seeded by ``seed``), and the bias
  is minus the (1 - rate) quantile of the server's prior for w_i . x, b_i = -(prior_mean + prior_std *
  Phi^-1(1 - rate)). The prior follows the random-linear measurement of the imprint block: the inputs are
  normalised per channel (unit variance over the data set), so for a random unit w, E_w[Var(w . x)] =
  trace(Sigma) / N = 1 and w . x ~ N(0, 1) is the prior (measured on the embedded photos: std 0.8-1.4 over
  directions; a row whose direction has a larger spread fires more often than ``rate``).
* ``rate=None`` and ``negative_scale`` s > 1: the paper's construction. The row is drawn for the *pixel*
  values p = x * std + mean in [0, 1] (``pixel_mean``, ``pixel_std``: the data normalisation, public in every
  observation): a Gaussian vector a_i whose negative entries are multiplied by s, bias 0, so that
  a_i . p = (sum of positive terms) + s (sum of negative terms) is negative for most images (all p >= 0). On
  the normalised input the same neuron is w_i = a_i * std (per channel), b_i = a_i . mean. Which images
  fire is decided mostly by their brightness (a_i . p ~ -(s - 1) E|a| sum_j p_j / 2 + noise): the darkest
  images fire many rows, so the rows are correlated and isolate fewer distinct samples than the quantile
  rows (measured in the benchmark).

The back projection has independent random columns u_i of norm ``gain`` / K (seeded), bias 0, so the block
only slightly perturbs the base network's input: the model still trains and predicts like the base network.
The attack that reads the gradient is :class:`gradaudit.attacks.analytic.TrapWeights`.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .registry import MALICIOUS_MODELS, MODELS, ModelSpec, build_model, register_model


def trap_rows(neurons: int, n: int, seed: int = 0) -> torch.Tensor:
    """K = ``neurons`` seeded random Gaussian directions of unit norm in R^n, [K, n] (the quantile construction)."""
    w = torch.randn(neurons, n, generator=torch.Generator().manual_seed(seed))
    return w / w.norm(dim=1, keepdim=True)


def trap_threshold(rate: float, prior_mean: float = 0.0, prior_std: float = 1.0) -> float:
    """The (1 - rate) quantile of N(prior_mean, prior_std^2): a row with bias -threshold fires with prob. ``rate``."""
    return float(prior_mean) + float(prior_std) * NormalDist().inv_cdf(1.0 - float(rate))


def _base_choices() -> list[str]:
    return sorted(k for k in MODELS if k not in MALICIOUS_MODELS)


@register_model("trap-weights", malicious=True)
class TrapWeightsModel(nn.Module):
    """A base network behind a block of trap weights (see the module docstring).

    Args:
        num_classes, input_shape: as for every registry model.
        base: registry name of the (non-malicious) network behind the block ("lenet", "mlp", ...).
        neurons: K, the number of trap rows.
        rate: the fraction of inputs each row fires for under the prior (quantile construction), in (0, 1);
            None: the paper's negative scaling (``negative_scale``).
        prior_mean, prior_std: the server's Gaussian prior for w . x (normalised inputs; quantile construction).
        negative_scale: s > 1, the paper's factor on the negative weights (only with ``rate=None``).
        pixel_mean, pixel_std: the data normalisation per channel (only with ``rate=None``; default the
            mean/std of uniform pixels, pass the dataset's).
        gain: K times the norm of each back-projection column (how much the block perturbs the base's input).
        seed: seeds the rows and the back projection, so the block is the same whatever the global RNG state.
        base_kwargs: keyword arguments of the base network.

    Parameters are named ``trap.weight`` [K, N], ``trap.bias`` [K], ``trap_out.weight`` [N, K],
    ``trap_out.bias`` [N], then ``base.*``.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 base: str = "lenet", neurons: int = 128, rate: Optional[float] = 0.02, prior_mean: float = 0.0,
                 prior_std: float = 1.0, negative_scale: Optional[float] = None,
                 pixel_mean: Optional[tuple[float, ...]] = None, pixel_std: Optional[tuple[float, ...]] = None,
                 gain: float = 1e-2, seed: int = 0, base_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        if base in MALICIOUS_MODELS or base not in MODELS:
            raise ConfigError(f"trap-weights base must be one of {', '.join(_base_choices())}, got '{base}'")
        if int(neurons) < 1:
            raise ConfigError(f"trap-weights neurons must be >= 1, got {neurons}")
        if rate is not None:
            if not 0 < float(rate) < 1:
                raise ConfigError(f"trap-weights rate must be in (0, 1) (or None for the paper's negative "
                                  f"scaling), got {rate}")
            if negative_scale is not None:
                raise ConfigError("trap-weights takes either rate (quantile rows) or negative_scale with "
                                  "rate=None (the paper's rows), not both")
            if not (math.isfinite(float(prior_std)) and float(prior_std) > 0 and math.isfinite(float(prior_mean))):
                raise ConfigError(f"trap-weights prior_std must be > 0 and prior_mean finite, got "
                                  f"{prior_mean}, {prior_std}")
        elif negative_scale is None or not (math.isfinite(float(negative_scale)) and float(negative_scale) > 1):
            raise ConfigError(f"trap-weights with rate=None needs negative_scale > 1 (the paper's scaling of the "
                              f"negative weights), got {negative_scale}")
        if not (math.isfinite(float(gain)) and float(gain) > 0):
            raise ConfigError(f"trap-weights gain must be > 0, got {gain}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.neurons = int(neurons)
        self.rate = None if rate is None else float(rate)
        c = self.input_shape[0]
        n = math.prod(self.input_shape)
        self.trap = nn.Linear(n, self.neurons)
        self.trap_out = nn.Linear(self.neurons, n)
        with torch.no_grad():
            if self.rate is not None:
                self.trap.weight.copy_(trap_rows(self.neurons, n, seed))
                self.trap.bias.fill_(-trap_threshold(self.rate, prior_mean, prior_std))
            else:
                mean = _per_channel(pixel_mean, c, 0.5, "pixel_mean")
                std = _per_channel(pixel_std, c, 1 / math.sqrt(12), "pixel_std")
                if not bool((std > 0).all()):
                    raise ConfigError(f"trap-weights pixel_std must be positive, got {pixel_std}")
                a = torch.randn(self.neurons, n, generator=torch.Generator().manual_seed(seed))
                a = torch.where(a < 0, a * float(negative_scale), a)
                a = a / a.norm(dim=1, keepdim=True)
                per_pixel = self.input_shape[1] * self.input_shape[2]
                self.trap.weight.copy_(a * std.repeat_interleave(per_pixel))
                self.trap.bias.copy_(a @ mean.repeat_interleave(per_pixel))
            u = torch.randn(n, self.neurons, generator=torch.Generator().manual_seed(seed + 1))
            self.trap_out.weight.copy_(float(gain) * u / u.norm(dim=0, keepdim=True) / self.neurons)
            self.trap_out.bias.zero_()
        self.base = build_model(ModelSpec(base, num_classes, self.input_shape, dict(base_kwargs or {})))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.trap(x.flatten(1)))
        return self.base(x + self.trap_out(z).view_as(x))


def _per_channel(values: Optional[tuple[float, ...]], channels: int, default: float, what: str) -> torch.Tensor:
    if values is None:
        return torch.full((channels,), default)
    t = torch.tensor([float(v) for v in values])
    if t.numel() == 1:
        t = t.expand(channels).clone()
    if t.numel() != channels or not bool(torch.isfinite(t).all()):
        raise ConfigError(f"trap-weights {what} must hold {channels} finite values (one per channel), got {values}")
    return t
