"""Renyi-DP accountant of the sampled Gaussian mechanism (DP-SGD's privacy guarantee).

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

from scipy import special

from ..errors import ConfigError

#: Orders alpha: 1.1 .. 10.9 in steps of 0.1 (Opacus' and TF-Privacy's default fractional grid) and the
#: integers 11 .. 256.
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 257)))


# ------------------------------------------------------------------------------------------ log-space arithmetic
def _log_add(logx: float, logy: float) -> float:
    a, b = min(logx, logy), max(logx, logy)
    if a == -math.inf:
        return b
    return math.log1p(math.exp(a - b)) + b


def _log_sub(logx: float, logy: float) -> float:
    """log(exp(logx) - exp(logy)), requiring logx >= logy."""
    if logy == -math.inf:
        return logx
    if logx <= logy:
        return -math.inf  # cancellation (only reached through rounding of negligible terms)
    try:
        return math.log(math.expm1(logx - logy)) + logy
    except OverflowError:
        return logx


def _log_erfc(x: float) -> float:
    return math.log(2.0) + float(special.log_ndtr(-x * math.sqrt(2.0)))


# ------------------------------------------------------------------------------------------------ log A_alpha
def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    log_q, log_1q = math.log(q), math.log1p(-q)
    for i in range(alpha + 1):
        log_binom = math.lgamma(alpha + 1) - math.lgamma(i + 1) - math.lgamma(alpha - i + 1)
        log_a = _log_add(log_a, log_binom + i * log_q + (alpha - i) * log_1q + (i * i - i) / (2 * sigma ** 2))
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    log_a0, log_a1 = -math.inf, -math.inf
    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    log_q, log_1q = math.log(q), math.log1p(-q)
    coef, i = 1.0, 0  # binom(alpha, i), updated by the recurrence binom(alpha, i) = binom(alpha, i-1) (alpha-i+1)/i
    while True:
        if i > 0:
            coef *= (alpha - i + 1) / i
        if coef == 0.0:
            break
        log_coef = math.log(abs(coef))
        j = alpha - i
        log_t0 = log_coef + i * log_q + j * log_1q
        log_t1 = log_coef + j * log_q + i * log_1q
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma ** 2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma ** 2) + log_e1
        if coef > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30:
            break
    return _log_add(log_a0, log_a1)


def rdp_sampled_gaussian(q: float, noise_multiplier: float, order: float) -> float:
    """RDP of order ``order`` of one step of the sampled Gaussian mechanism (sampling rate q, sigma = noise/C)."""
    _check(q, noise_multiplier)
    if not order > 1:
        raise ConfigError(f"RDP order must be > 1, got {order}")
    if q == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if q == 1.0:
        return order / (2 * noise_multiplier ** 2)
    if math.isinf(order):
        return math.inf
    if float(order).is_integer():
        return _log_a_int(q, noise_multiplier, int(order)) / (order - 1)
    return _log_a_frac(q, noise_multiplier, float(order)) / (order - 1)


def compute_rdp(q: float, noise_multiplier: float, steps: int,
                orders: Iterable[float] = DEFAULT_ORDERS) -> list[float]:
    """RDP after ``steps`` compositions, one value per order."""
    if steps < 0 or int(steps) != steps:
        raise ConfigError(f"steps must be a non-negative integer, got {steps}")
    return [steps * rdp_sampled_gaussian(q, noise_multiplier, a) for a in orders]


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float,
                   conversion: str = "improved") -> tuple[float, float]:
    """Smallest epsilon over the orders such that the mechanism is (epsilon, delta)-DP; returns (eps, best order)."""
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")
    if conversion not in ("improved", "classic"):
        raise ConfigError(f"unknown RDP conversion '{conversion}'; valid: classic, improved")
    best, best_order = math.inf, math.nan
    for a, r in zip(orders, rdp):
        if math.isinf(r):
            continue
        if conversion == "classic":
            eps = r - math.log(delta) / (a - 1)
        else:
            eps = r + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        if eps < best:
            best, best_order = eps, a
    return max(best, 0.0), best_order


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
