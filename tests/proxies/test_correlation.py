"""Spearman rank correlation with seeded percentile-bootstrap intervals."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from gradaudit.errors import ConfigError
from gradaudit.proxies.correlation import _rowwise_spearman, correlate_proxies, spearman_bootstrap
from gradaudit.proxies.lavp import ProxyTable


def test_rho_and_p_value_are_scipys():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(40)
    y = x + rng.standard_normal(40)
    r = spearman_bootstrap(x, y, n_boot=500, seed=1)
    ref = spearmanr(x, y)
    assert r.rho == pytest.approx(ref.statistic) and r.p_value == pytest.approx(ref.pvalue)
    assert r.ci_low < r.rho < r.ci_high and r.n == 40 and r.n_boot_valid == 500


def test_bootstrap_interval_is_the_percentile_interval_of_resampled_rhos():
    rng = np.random.default_rng(2)
    x = np.round(rng.standard_normal(25), 1)  # ties
    y = np.round(x ** 3 + rng.standard_normal(25), 1)
    r = spearman_bootstrap(x, y, n_boot=300, confidence=0.9, seed=7)
    idx = np.random.default_rng(7).integers(0, 25, size=(300, 25))
    boots = np.array([spearmanr(x[i], y[i]).statistic for i in idx])
    boots = boots[np.isfinite(boots)]
    assert np.allclose(_rowwise_spearman(x[idx], y[idx])[:50], [spearmanr(x[i], y[i]).statistic for i in idx[:50]])
    assert (r.ci_low, r.ci_high) == pytest.approx(tuple(np.quantile(boots, [0.05, 0.95])))


def test_seeded_and_monotone_edge_cases():
    x = np.arange(20.0)
    perfect = spearman_bootstrap(x, np.exp(x), n_boot=200)
    assert perfect.rho == pytest.approx(1.0) and perfect.ci_low == pytest.approx(1.0)
    anti = spearman_bootstrap(x, -x, n_boot=200)
    assert anti.rho == pytest.approx(-1.0) and anti.ci_high == pytest.approx(-1.0)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(30), rng.standard_normal(30)
    assert spearman_bootstrap(a, b, seed=5) == spearman_bootstrap(a, b, seed=5)
    assert spearman_bootstrap(a, b, seed=5).ci_low != spearman_bootstrap(a, b, seed=6).ci_low
    const = spearman_bootstrap(x, np.ones(20))
    assert np.isnan(const.rho) and np.isnan(const.ci_low)


def test_non_finite_pairs_are_dropped():
    x = np.array([1.0, 2, 3, np.nan, 5, 6])
    y = np.array([2.0, 1, 4, 3, np.inf, 7])
    r = spearman_bootstrap(x, y, n_boot=0)
    assert r.n == 4 and r.rho == pytest.approx(spearmanr([1, 2, 3, 6], [2, 1, 4, 7]).statistic)
    assert np.isnan(r.ci_low)
    with pytest.raises(ConfigError):
        spearman_bootstrap([1, 2], [1, 2, 3])
    with pytest.raises(ConfigError):
        spearman_bootstrap([1, 2, 3], [1, 2, 3], confidence=1.5)


def test_correlate_proxies_aligns_by_index():
    rows = [{"index": i, "grad_norm": float(g), "l2_max": float(l)} for i, g, l in
            [(10, 1, 5), (11, 2, 4), (12, 3, 3), (13, 4, 2), (14, 5, 1)]]
    table = ProxyTable(rows)
    psnr_by_index = {14: 50.0, 13: 40.0, 12: 30.0, 11: 20.0, 10: 10.0}
    out = correlate_proxies(table, {"psnr": psnr_by_index, "mse": [5, 4, 3, 2, 1]}, n_boot=50)
    got = {(o["proxy"], o["metric"]): o["rho"] for o in out}
    assert got[("grad_norm", "psnr")] == pytest.approx(1.0) and got[("l2_max", "psnr")] == pytest.approx(-1.0)
    assert got[("grad_norm", "mse")] == pytest.approx(-1.0)
    with pytest.raises(ConfigError, match="values"):
        correlate_proxies(table, {"mse": [1, 2]})
