"""The RDP accountant of the sampled Gaussian mechanism against closed forms, numerical integration,
published values and (when installed) Opacus."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradaudit.defenses import DPSGD
from gradaudit.defenses.accountant import DEFAULT_ORDERS, compute_rdp, epsilon, rdp_sampled_gaussian, rdp_to_epsilon
from gradaudit.errors import ConfigError

TF_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))  # TF-Privacy's / Opacus' default orders


@pytest.mark.parametrize("sigma", [0.5, 1.1, 4.0])
@pytest.mark.parametrize("alpha", [1.5, 2, 7.3, 32, 256])
def test_full_batch_is_the_gaussian_mechanism(sigma, alpha):
    assert rdp_sampled_gaussian(1.0, sigma, alpha) == alpha / (2 * sigma ** 2)
    # the general (subsampled) expansions tend to it as q -> 1
    assert rdp_sampled_gaussian(1 - 1e-9, sigma, alpha) == pytest.approx(alpha / (2 * sigma ** 2), rel=1e-6)


def test_full_batch_classic_epsilon_matches_the_analytic_optimum():
    # eps(alpha) = alpha / (2 sigma^2) + log(1/delta) / (alpha - 1) is minimised at alpha* = 1 + sigma sqrt(2 log 1/delta)
    sigma, delta = 1.1, 1e-5
    analytic = 1 / (2 * sigma ** 2) + math.sqrt(2 * math.log(1 / delta)) / sigma
    got = epsilon(sigma, 1.0, 1, delta, conversion="classic")
    assert analytic <= got <= analytic * 1.001
    assert DPSGD(1.0, sigma).epsilon(1, 1.0) <= got  # the improved conversion is never worse


def _numerical_rdp(q, sigma, alpha):
    """log E_{z ~ N(0, s^2)}[((1-q) + q exp((2z-1)/(2 s^2)))^alpha] / (alpha-1) by quadrature."""
    z = np.linspace(-40 * sigma, 40 * sigma + alpha + 5, 200_001)
    logf = (alpha * np.log((1 - q) + q * np.exp((2 * z - 1) / (2 * sigma ** 2)))
            - z ** 2 / (2 * sigma ** 2) - 0.5 * np.log(2 * np.pi * sigma ** 2))
    m = logf.max()
    return (m + np.log(np.trapezoid(np.exp(logf - m), z))) / (alpha - 1)


@pytest.mark.parametrize("q,sigma", [(0.01, 1.0), (0.05, 0.8), (0.3, 2.0)])
@pytest.mark.parametrize("alpha", [2, 3.5, 8, 12.7, 32])
def test_sampled_gaussian_matches_numerical_integration(q, sigma, alpha):
    assert rdp_sampled_gaussian(q, sigma, alpha) == pytest.approx(_numerical_rdp(q, sigma, alpha), rel=1e-6)


@pytest.mark.parametrize("sigma,epochs,expected", [(1.12, 60, 2.92), (1.2, 10, 1.20), (1.12, 1, 1.00),
                                                    (1.12, 2, 1.04)])
def test_published_tf_privacy_mnist_values(sigma, epochs, expected):
    """TF-Privacy tutorials/README.md (MNIST, N=60000, batch 256, delta=1e-5, classic RDP -> DP conversion)."""
    steps = epochs * 60000 // 256
    got = epsilon(sigma, 256 / 60000, steps, 1e-5, orders=TF_ORDERS, conversion="classic")
    assert got == pytest.approx(expected, abs=0.005)


def test_published_opacus_value():
    """opacus.ai compute_dp_sgd_privacy docs: q=0.01, sigma=1.0, 300 steps, alphas 2 5 10 20 100 -> eps 2.39, alpha 5."""
    orders = [2, 5, 10, 20, 100]
    eps, order = rdp_to_epsilon(orders, compute_rdp(0.01, 1.0, 300, orders), 1e-5)
    assert eps == pytest.approx(2.39, abs=0.005) and order == 5


def test_abadi_setting_sigma_1_1():
    """sigma=1.1, q=256/60000, 60 epochs: eps ~ 2.60 (improved, Opacus) and ~ 3.01 (classic conversion)."""
    steps = math.ceil(60 * 60000 / 256)
    improved = DPSGD(1.0, 1.1).epsilon(steps, 256 / 60000)
    classic = epsilon(1.1, 256 / 60000, steps, 1e-5, conversion="classic")
    assert improved == pytest.approx(2.60, abs=0.01)
    assert classic == pytest.approx(3.01, abs=0.01)
    assert epsilon(1.1, 256 / 60000, steps, 1e-5, orders=TF_ORDERS) == pytest.approx(improved, rel=1e-3)


def test_monotone_and_edge_cases():
    assert epsilon(1.0, 0.01, 100, 1e-5) < epsilon(1.0, 0.01, 1000, 1e-5) < epsilon(1.0, 0.02, 1000, 1e-5)
    assert epsilon(2.0, 0.01, 1000, 1e-5) < epsilon(1.0, 0.01, 1000, 1e-5)
    assert epsilon(1.0, 0.01, 0, 1e-5) == 0.0 and epsilon(1.0, 0.0, 10, 1e-5) == 0.0
    assert epsilon(0.0, 0.5, 10, 1e-5) == math.inf
    assert compute_rdp(0.1, 1.0, 3, [2, 4]) == pytest.approx([3 * rdp_sampled_gaussian(0.1, 1.0, a) for a in (2, 4)])
    assert min(DEFAULT_ORDERS) > 1 and max(DEFAULT_ORDERS) == 256
    for bad in (dict(q=1.5, s=1.0, d=1e-5), dict(q=0.1, s=-1.0, d=1e-5), dict(q=0.1, s=1.0, d=0.0)):
        with pytest.raises(ConfigError):
            epsilon(bad["s"], bad["q"], 10, bad["d"])
    with pytest.raises(ConfigError):
        rdp_sampled_gaussian(0.1, 1.0, 1.0)


def test_matches_opacus_rdp_accountant():
    opacus = pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    for sigma, q, steps in [(1.1, 256 / 60000, 14063), (0.8, 0.01, 1000), (2.0, 0.1, 50), (1.0, 1.0, 1)]:
        acc = RDPAccountant()
        acc.history = [(sigma, q, steps)]
        theirs = acc.get_epsilon(delta=1e-5, alphas=TF_ORDERS)
        ours = epsilon(sigma, q, steps, 1e-5, orders=TF_ORDERS)
        assert ours == pytest.approx(theirs, rel=1e-3), opacus.__version__
