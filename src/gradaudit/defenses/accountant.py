"""Renyi-DP accounting of the sampled Gaussian mechanism (DP-SGD's privacy guarantee), through Opacus.

The RDP of the sampled Gaussian mechanism comes from Opacus' implementation
(``opacus.accountants.analysis.rdp.compute_rdp``, the same Mironov-Talwar-Zhang analysis gradaudit once
carried a copy of: on every (q, sigma, order) compared, q = 256/60000 ... 1, sigma 0 ... 3.5, orders 1.5 ... 64,
the two agreed to 1e-12 relative, so the copy went). This module keeps the input checks, the order grid and
both conversions to (epsilon, delta) below; Opacus' ``get_privacy_spent`` gives the improved one.

Mechanism. One DP-SGD step releases ``sum_j clip_C(g_j) + N(0, sigma^2 C^2 I)`` over a batch drawn by Poisson
sampling with rate q (each record is in the batch independently with probability q). With the noise multiplier
sigma = noise std / C, its Renyi divergence of order alpha > 1 between neighbouring data sets (one record added
or removed) is bounded by (Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian
Mechanism")

    RDP(alpha) = log(A_alpha) / (alpha - 1),
    A_alpha    = E_{z ~ mu_0} [ (mu(z) / mu_0(z))^alpha ],   mu_0 = N(0, sigma^2),  mu = (1 - q) mu_0 + q N(1, sigma^2).

* integer alpha: the binomial expansion A_alpha = sum_{i=0}^{alpha} binom(alpha, i) (1-q)^(alpha-i) q^i
  exp((i^2 - i) / (2 sigma^2)), summed in log space;
* fractional alpha: the two-sided series of Mironov et al. (Sec. 3.3) with log-erfc tails, summed until the
  terms fall below exp(-30);
* q = 1 (full batch, e.g. one client's whole batch in FedSGD): the plain Gaussian mechanism,
  RDP(alpha) = alpha / (2 sigma^2) exactly; q = 0: RDP = 0.

RDP composes additively over steps: RDP_T(alpha) = T * RDP(alpha). Conversion to (epsilon, delta)-DP takes the
minimum over the orders of

* ``conversion="improved"`` (default; what Opacus' RDPAccountant and TF-Privacy use; Balle et al. 2020,
  Canonne-Kamath-Steinke 2020, Prop. 12): eps = RDP_T(alpha) + log(1 - 1/alpha) - log(delta alpha) / (alpha - 1),
* ``conversion="classic"`` (Mironov 2017, Prop. 3): eps = RDP_T(alpha) - log(delta) / (alpha - 1).

Both are valid upper bounds; "improved" is never larger. Reference values (MNIST, q = 256/60000, delta = 1e-5):
sigma = 1.1, 60 epochs (14063 steps) gives eps = 2.60 (improved) / 3.01 (classic); the TF-Privacy tutorial's
published eps = 2.92 is sigma = 1.12, 14062 steps with the classic conversion (tests/defenses/test_accountant.py
reproduces it, and Opacus' documented 2.39 for q = 0.01, sigma = 1, 300 steps, alphas {2, 5, 10, 20, 100}).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from ..errors import ConfigError

#: Orders alpha: 1.1 .. 10.9 in steps of 0.1 (Opacus' and TF-Privacy's default fractional grid) and the
#: integers 11 .. 256.
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 257)))


def rdp_sampled_gaussian(q: float, noise_multiplier: float, order: float) -> float:
    """RDP of order ``order`` of one step of the sampled Gaussian mechanism (sampling rate q, sigma = noise/C)."""
    _check(q, noise_multiplier)
    if not order > 1:
        raise ConfigError(f"RDP order must be > 1, got {order}")
    return compute_rdp(q, noise_multiplier, 1, [order])[0]


def compute_rdp(q: float, noise_multiplier: float, steps: int,
                orders: Iterable[float] = DEFAULT_ORDERS) -> list[float]:
    """RDP after ``steps`` compositions, one value per order (Opacus' sampled-Gaussian RDP)."""
    from opacus.accountants.analysis.rdp import compute_rdp as opacus_rdp  # imported when needed: 2.5 s

    _check(q, noise_multiplier)
    if steps < 0 or int(steps) != steps:
        raise ConfigError(f"steps must be a non-negative integer, got {steps}")
    orders = [float(a) for a in orders]
    if any(not a > 1 for a in orders):
        raise ConfigError(f"RDP orders must be > 1, got {min(orders)}")
    if steps == 0 or q == 0:
        return [0.0] * len(orders)
    return [float(v) for v in opacus_rdp(q=q, noise_multiplier=noise_multiplier, steps=int(steps), orders=orders)]


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float,
                   conversion: str = "improved") -> tuple[float, float]:
    """Smallest epsilon over the orders such that the mechanism is (epsilon, delta)-DP; returns (eps, best order).

    ``improved``: Opacus' ``get_privacy_spent``; ``classic``: eps = RDP_T(alpha) - log(delta) / (alpha - 1)."""
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")
    if conversion not in ("improved", "classic"):
        raise ConfigError(f"unknown RDP conversion '{conversion}'; valid: classic, improved")
    pairs = [(float(a), float(r)) for a, r in zip(orders, rdp) if not math.isinf(r)]
    if not pairs:
        return math.inf, math.nan
    if conversion == "improved":
        from opacus.accountants.analysis.rdp import get_privacy_spent

        eps, order = get_privacy_spent(orders=[a for a, _ in pairs], rdp=[r for _, r in pairs], delta=delta)
        return max(float(eps), 0.0), float(order)
    eps, order = min((r - math.log(delta) / (a - 1), a) for a, r in pairs)
    return max(eps, 0.0), order


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            orders: Iterable[float] = DEFAULT_ORDERS, conversion: str = "improved") -> float:
    """(epsilon, delta)-DP guarantee of ``steps`` DP-SGD steps with Poisson sampling rate ``sample_rate``."""
    orders = list(orders)
    if steps == 0 or sample_rate == 0:
        _check(sample_rate, noise_multiplier)
        return 0.0
    return rdp_to_epsilon(orders, compute_rdp(sample_rate, noise_multiplier, steps, orders), delta, conversion)[0]


def _check(q: float, noise_multiplier: float) -> None:
    if not 0 <= q <= 1:
        raise ConfigError(f"sample rate must be in [0, 1], got {q}")
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise ConfigError(f"noise multiplier must be finite and >= 0, got {noise_multiplier}")
