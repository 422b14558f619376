"""Spearman rank correlation with bootstrap confidence intervals (proxy vs attack quality).

The LAVP paper (Hong et al., arXiv 2312.12488, seed 000) scores a vulnerability proxy by Spearman's rank
correlation between the proxy and a reconstruction-quality metric (MSE, PSNR, SSIM, LPIPS) over many samples,
per attack loss. Here:

    rho = Pearson correlation of the (average-tie) ranks of x and y     (``scipy.stats.spearmanr``)

and a percentile bootstrap interval: ``n_boot`` resamples of the n (x, y) pairs drawn with replacement
(numpy ``default_rng(seed)``, so the interval is reproducible), rho of each (vectorised: ranks along rows,
then row-wise Pearson), and the (1 - confidence)/2 and (1 + confidence)/2 quantiles. Resamples whose x or y is
constant (rho undefined) are dropped and counted. Pairs with a NaN/inf in either value are removed first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata, spearmanr

from ..errors import ConfigError


@dataclass
class SpearmanResult:
    rho: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int
    n_boot: int
    n_boot_valid: int
    confidence: float
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _rowwise_spearman(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    rx = rankdata(X, axis=1)
    ry = rankdata(Y, axis=1)
    rx = rx - rx.mean(1, keepdims=True)
    ry = ry - ry.mean(1, keepdims=True)
    den = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(1) / np.where(den > 0, den, 1), np.nan)


def spearman_bootstrap(x: Sequence[float], y: Sequence[float], *, n_boot: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> SpearmanResult:
    """Spearman's rho of (x, y), its p-value (scipy) and a seeded percentile-bootstrap confidence interval."""
    x = np.asarray(x, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    if x.shape != y.shape:
        raise ConfigError(f"x and y must have the same length, got {x.size} and {y.size}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 0:
        raise ConfigError(f"n_boot must be >= 0, got {n_boot}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    nan = float("nan")
    if n < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return SpearmanResult(nan, nan, nan, nan, n, n_boot, 0, confidence, seed)
    res = spearmanr(x, y)
    rho, p = float(res.statistic), float(res.pvalue)
    lo = hi = nan
    valid = 0
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        boots = _rowwise_spearman(x[idx], y[idx])
        boots = boots[np.isfinite(boots)]
        valid = int(boots.size)
        if valid:
            a = (1 - confidence) / 2
            lo, hi = (float(v) for v in np.quantile(boots, [a, 1 - a]))
    return SpearmanResult(rho, p, lo, hi, n, n_boot, valid, confidence, seed)


def correlate_proxies(table, quality: Mapping[str, Sequence[float] | Mapping[int, float]],
                      proxies: Sequence[str] | None = None, *, n_boot: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> list[dict]:
    """Spearman rho (with bootstrap CI) of every proxy column of ``table`` against every quality metric.

    ``table``: a :class:`~gradaudit.proxies.lavp.ProxyTable`. ``quality``: metric name -> values, either a
    sequence in the table's row order or a mapping from sample ``index`` to value (rows without a value are
    dropped). Returns one dict per (proxy, metric): proxy, metric, and the fields of :class:`SpearmanResult`.
    """
    proxies = list(proxies) if proxies is not None else table.proxies
    index = [r["index"] for r in table.rows]
    out = []
    for metric, values in quality.items():
        if isinstance(values, Mapping):
            q = np.array([values.get(i, np.nan) for i in index], dtype=float)
        else:
            q = np.asarray(values, dtype=float).reshape(-1)
            if q.size != len(index):
                raise ConfigError(f"metric '{metric}' has {q.size} values for a table of {len(index)} samples")
        for name in proxies:
            r = spearman_bootstrap(table.column(name), q, n_boot=n_boot, confidence=confidence, seed=seed)
            out.append({"proxy": name, "metric": metric, **r.to_dict()})
    return out
