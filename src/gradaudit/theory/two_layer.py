"""The empirical side of seed 002's two-layer theory (Table 1 directions, Table 2 feature errors).

Seed 002 (section 3; methods.md section 8) bounds the reconstruction error of a two-layer network of width m on
data of dimension d with batch B, for the tensor method of Wang, Lee, Lei (AISTATS 2023) from above and for any
attack from below. Its formulas did not survive extraction; the directions it states do:

* the error grows with d and with B and shrinks with m (Theorem 3.1 / 3.2);
* dropout with rate p acts as width (1 - p) m (section 3.4);
* gradient noise raises the error with its scale sigma (sections 3.2, Theorem 3.2);
* gradient pruning breaks the Gaussian-weight assumption of the upper bound: "no evidence that the tensor-based
  method can reconstruct input data with small errors under gradient pruning" (section 3.5).

This module measures them. One *point* is a random two-layer net from
:func:`gradaudit.attacks.features.tensor.synthetic_two_layer` (unit Gaussian features h_i in R^d, w_j ~ N(0, I),
a_j = +-1/m, square loss) whose first-layer gradient passes through a defense built by
:func:`gradaudit.defenses.parse_defense` (the same transforms the clients apply), then the tensor method
(:func:`~gradaudit.attacks.features.tensor.reconstruct_features`) with two subspace estimates:

* ``moment``: the top-B eigenvectors of M = (1/m) sum_j g~_j u_j^T (Wang et al.'s method, the one the bounds
  analyse: its span is only O(1/sqrt m) accurate);
* ``gradients``: the top-B singular directions of the gradient rows (ours: exact without a defense).

Two errors per point: ``span``, seed 002's metric (mean norm of each unit true feature's projection on the
orthogonal complement of the reconstructed span; :func:`feature_reconstruction_error`), and ``feature``, the
mean sine between each true feature and its matched reconstruction (:func:`feature_matching_error`), which also
sees features mixed within the right span. Random directions score sqrt(1 - B/d) on ``span``.

Each axis varies one quantity around the base point (d, m, B) = (20, 4000, 4); the scaling exponent of an axis is
the least-squares slope of log(mean error) on log(x) (x = d, m, B, the effective width (1 - p) m for dropout,
sigma for noise). Pruning has no exponent: the table gives the error at p = 0 and at the largest p beside the
random level, and counts as "defeats" when the latter is above half the random level. Noise strength sigma is relative: the defense adds N(0, (sigma * rms(g))^2) per entry (the
gradient's scale is arbitrary here: a_j = +-1/m). Dropout strengths are chosen so that (1 - p) m_0 lands on
widths of the m axis: the two errors are printed side by side.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from ..attacks.features.tensor import (feature_matching_error, feature_reconstruction_error, reconstruct_features,
                                       synthetic_two_layer)
from ..defenses import parse_defense
from ..errors import ConfigError

AXES = ("d", "m", "B", "dropout", "noise", "prune")
SUBSPACES = ("moment", "gradients")
METRICS = ("span", "feature")

#: what seed 002 states for each axis (section 3, Table 1)
SEED_DIRECTIONS = {
    "d": "grows with d (> 0)",
    "m": "shrinks with m (< 0)",
    "B": "grows with B (> 0)",
    "dropout": "width (1-p)m (< 0, like m)",
    "noise": "grows with sigma (> 0)",
    "prune": "defeats it (towards random)",
}
#: the sign seed 002 predicts for the fitted exponent (None: no exponent, see the table)
EXPECTED_SIGN = {"d": 1, "m": -1, "B": 1, "dropout": -1, "noise": 1, "prune": None}


@dataclass
class BoundsConfig:
    """The grid: a base point and, per axis, the values swept (the other quantities at the base)."""

    d: int = 20
    width: int = 4000
    batch: int = 4
    seeds: int = 3
    d_values: Sequence[int] = (10, 20, 40, 80)
    width_values: Sequence[int] = (500, 1000, 2000, 4000, 8000, 16000)
    batch_values: Sequence[int] = (2, 4, 8)
    dropout: Sequence[float] = (0.5, 0.75, 0.875)
    noise: Sequence[float] = (0.1, 0.3, 1.0, 3.0)
    prune: Sequence[float] = (0.3, 0.5, 0.7, 0.9, 0.99)
    subspaces: Sequence[str] = SUBSPACES
    restarts: int = 8
    iterations: int = 30

    def validate(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"bounds needs seeds >= 1, got {self.seeds}")
        for s in self.subspaces:
            if s not in SUBSPACES:
                raise ConfigError(f"unknown subspace '{s}'; valid: {', '.join(SUBSPACES)}")
        ds = [self.d, *self.d_values]
        bs = [self.batch, *self.batch_values]
        if min(ds) < max(bs) or min(bs) < 1:
            raise ConfigError(f"bounds needs 1 <= B <= d on every point, got d in {sorted(set(ds))}, "
                              f"B in {sorted(set(bs))}")
        if min([self.width, *self.width_values]) < 4 * max(bs):
            raise ConfigError("bounds needs widths of at least 4 B")
        for name, values, lo, hi in (("dropout", self.dropout, 0, 1), ("prune", self.prune, 0, 1)):
            if any(not lo <= v < hi for v in values):
                raise ConfigError(f"{name} strengths must be in [0, 1), got {list(values)}")
        if any(not (v > 0 and math.isfinite(v)) for v in self.noise):
            raise ConfigError(f"noise strengths must be > 0, got {list(self.noise)}")

    @classmethod
    def full(cls) -> "BoundsConfig":
        """A denser grid with 16 seeds (about a minute on one CPU thread; 8 seeds took 23 s at load 5)."""
        return cls(seeds=16, d_values=(10, 20, 40, 80, 160), width_values=(500, 1000, 2000, 4000, 8000, 16000, 32000),
                   batch_values=(2, 3, 4, 6, 8), dropout=(0.3, 0.5, 0.7, 0.75, 0.875, 0.9),
                   noise=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0), prune=(0.3, 0.5, 0.7, 0.9, 0.99))


def defense_spec(axis: str, strength: float, gradient_rms: float) -> Optional[str]:
    """The :func:`parse_defense` spec of an axis' defense (noise relative to the gradient's rms)."""
    if axis == "dropout":
        return f"dropout:{strength}"
    if axis == "noise":
        return f"noise:{strength * gradient_rms!r}"
    if axis == "prune":
        return f"prune:{strength}"
    return None


def measure_point(d: int, width: int, batch: int, seed: int, axis: str = "none", strength: float = 0.0,
                  subspaces: Sequence[str] = SUBSPACES, restarts: int = 8, iterations: int = 30
                  ) -> dict[str, float]:
    """Errors of the tensor method on one random two-layer net (one seed), per subspace estimate and metric.

    Returns {"span/moment": .., "feature/moment": .., "span/gradients": .., ..., "random": the span error of
    B random directions, "seconds": ..}."""
    obs = synthetic_two_layer(d, batch, width, seed=seed)
    g = obs["gradients"]
    spec = defense_spec(axis, strength, float(g.pow(2).mean().sqrt())) if strength > 0 else None
    if spec is not None:
        gen = torch.Generator().manual_seed(10_000 + seed)
        g = parse_defense(spec)({"fc1.weight": g}, generator=gen)["fc1.weight"]
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    for sub in subspaces:
        rec = reconstruct_features(obs["weights"], g, obs["head"], batch, seed=seed, subspace=sub,
                                   restarts=restarts, iterations=iterations)
        feats = torch.nan_to_num(rec.features, nan=0.0, posinf=0.0, neginf=0.0)  # a failed component: nothing
        out[f"span/{sub}"] = feature_reconstruction_error(obs["features"], feats)
        out[f"feature/{sub}"] = feature_matching_error(obs["features"], feats)
    gen = torch.Generator().manual_seed(20_000 + seed)
    out["random"] = feature_reconstruction_error(obs["features"], torch.randn(batch, d, generator=gen,
                                                                              dtype=torch.float64))
    out["seconds"] = time.perf_counter() - t0
    return out


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of log y on log x and its R^2; (nan, nan) with fewer than 2 usable points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return float("nan"), float("nan")
    mx = statistics.mean(p[0] for p in pts)
    my = statistics.mean(p[1] for p in pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return float("nan"), float("nan")
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    ss_res = sum((p[1] - my - slope * (p[0] - mx)) ** 2 for p in pts)
    return slope, (1 - ss_res / ss_tot) if ss_tot > 0 else 1.0


@dataclass
class BoundsResult:
    """Per point (axis, value): mean and std over seeds of each error; per axis the fitted exponents."""

    config: BoundsConfig
    rows: list[dict[str, Any]] = field(default_factory=list)
    exponents: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def axis_rows(self, axis: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["axis"] == axis]


def _points(cfg: BoundsConfig) -> list[tuple[str, float, int, int, int]]:
    """(axis, value, d, m, B) of every point; the base point appears on every axis where it belongs."""
    pts = [("d", float(v), int(v), cfg.width, cfg.batch) for v in cfg.d_values]
    pts += [("m", float(v), cfg.d, int(v), cfg.batch) for v in cfg.width_values]
    pts += [("B", float(v), cfg.d, cfg.width, int(v)) for v in cfg.batch_values]
    for axis, values in (("dropout", cfg.dropout), ("noise", cfg.noise), ("prune", cfg.prune)):
        pts += [(axis, 0.0, cfg.d, cfg.width, cfg.batch)] + [(axis, float(v), cfg.d, cfg.width, cfg.batch)
                                                              for v in values if v > 0]
    return pts


def run_bounds(cfg: BoundsConfig | None = None,
               progress: Callable[[int, int], None] | None = None) -> BoundsResult:
    """Measure every point of the grid over ``cfg.seeds`` seeds and fit the exponents."""
    cfg = cfg or BoundsConfig()
    cfg.validate()
    t0 = time.perf_counter()
    points = _points(cfg)
    cache: dict[tuple, dict[str, float]] = {}
    result = BoundsResult(cfg)
    total, done = len(points) * cfg.seeds, 0
    keys = [f"{metric}/{sub}" for sub in cfg.subspaces for metric in METRICS]
    for axis, value, d, m, b in points:
        defended = axis in ("dropout", "noise", "prune") and value > 0
        per_seed = []
        for seed in range(cfg.seeds):
            key = (d, m, b, seed, axis if defended else "none", value if defended else 0.0)
            if key not in cache:
                cache[key] = measure_point(d, m, b, seed, axis if defended else "none",
                                           value if defended else 0.0, cfg.subspaces, cfg.restarts, cfg.iterations)
            per_seed.append(cache[key])
            done += 1
            if progress is not None:
                progress(done, total)
        row: dict[str, Any] = {"axis": axis, "value": value, "d": d, "m": m, "B": b,
                               "effective_width": m * (1 - value) if axis == "dropout" else m,
                               "seeds": cfg.seeds}
        for k in keys + ["random"]:
            vals = [s[k] for s in per_seed]
            row[k] = statistics.mean(vals)
            row[k + " std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        result.rows.append(row)
    result.exponents = _exponents(result, keys)
    result.seconds = time.perf_counter() - t0
    return result


def _exponents(result: BoundsResult, keys: list[str]) -> list[dict[str, Any]]:
    """Fitted exponent per axis and error (None where the errors are at float precision: 'exact')."""
    out = []
    for axis in AXES:
        rows = result.axis_rows(axis)
        if axis in ("dropout", "noise", "prune"):
            rows_fit = [r for r in rows if r["value"] > 0] if axis == "noise" else rows
        else:
            rows_fit = rows
        xs = {"dropout": [r["effective_width"] for r in rows_fit], "noise": [r["value"] for r in rows_fit]
              }.get(axis, [r["value"] if axis != "prune" else 1 - r["value"] for r in rows_fit])
        for k in keys:
            ys = [r[k] for r in rows_fit]
            entry: dict[str, Any] = {"axis": axis, "error": k, "seed says": SEED_DIRECTIONS[axis]}
            if not ys or max(ys) < 1e-6:
                entry.update(exponent=None, r2=None, agrees=None, note="exact (error at float precision)")
            elif axis == "prune":
                base = next((r[k] for r in rows if r["value"] == 0), float("nan"))
                top = rows[-1]
                ratio = top[k] / top["random"] if top["random"] > 0 else float("nan")
                # "defeats": at the strongest pruning the error is at least half of random directions'
                entry.update(exponent=None, r2=None, agrees=bool(top[k] > base and ratio > 0.5),
                             note=f"p=0 {base:.3g} -> p={top['value']:g} {top[k]:.3g} (random {top['random']:.3g})")
            else:
                slope, r2 = fit_exponent(xs, ys)
                sign = EXPECTED_SIGN[axis]
                entry.update(exponent=slope, r2=r2,
                             agrees=None if math.isnan(slope) else bool(slope * sign > 0), note="")
            out.append(entry)
    return out


def dropout_equivalence(result: BoundsResult, key: str) -> list[tuple[float, float, float, Optional[float]]]:
    """(p, (1-p) m_0, error with dropout p at m_0, error without defense at width (1-p) m_0 if measured)."""
    widths = {r["m"]: r[key] for r in result.axis_rows("m")}
    out = []
    for r in result.axis_rows("dropout"):
        if r["value"] > 0:
            eff = r["effective_width"]
            match = next((v for w, v in widths.items() if abs(w - eff) < 1e-6), None)
            out.append((r["value"], eff, r[key], match))
    return out


def config_dict(cfg: BoundsConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in asdict(cfg).items()}


__all__ = ["BoundsConfig", "BoundsResult", "run_bounds", "measure_point", "fit_exponent", "defense_spec",
           "dropout_equivalence", "SEED_DIRECTIONS", "AXES"]
