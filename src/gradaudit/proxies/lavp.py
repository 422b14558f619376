"""Per-sample vulnerability proxies: gradient norm and the loss-aware vulnerability proxy (LAVP).

Hong, Cho, Cho, Ahn, Kim, "Foreseeing Reconstruction Quality of Gradient Inversion: An Optimization
Perspective", AAAI 2024, arXiv 2312.12488 (seed 000); methods.md section 7.

For every sample x* (label y, the model at theta fixed), with H_L2 = 2 J^T J and
H_cos = J^T (I - u u^T) J / ||g*||^2 the Hessians of the L2 and cosine matching losses at x*
(:mod:`.hessian`):

=====================  =============================================================================
column                 meaning
=====================  =============================================================================
``grad_norm``          ||g*||, the baseline proxy (the same for every attack loss)
``l2_max``/``l2_min``  lambda_max / lambda_min of H_L2 (LAVP for an L2 attack, e.g. DLG)
``cosine_max``/``_min`` lambda_max / lambda_min of H_cos (LAVP for a cosine attack, e.g. Inverting Gradients)
``fused_value_max``    sqrt(l2_max * cosine_max): geometric mean of the two LAVP *values*
``fused_rank_max``     sqrt(rank(l2_max) * rank(cosine_max)): geometric mean of the per-sample *ranks*
                       (rank 1 = smallest value, average ranks for ties, ranks within this table)
``fused_*_min``        the same for lambda_min
=====================  =============================================================================

The fusion is the paper's loss-agnostic proxy for an attacker whose loss is unknown. The value form mixes
two quantities on very different scales (H_L2 grows like ||g*||^2 times H_cos); the rank form weighs both
losses equally and does not depend on those scales, but depends on which samples are in the table. Both are
reported; which one is used must be stated with any result (the validation study decides).

Interpretation (seed 000): near x*, L(x* + d) ~ 1/2 d^T H d, so gradient descent contracts each eigen-direction
at a rate set by its eigenvalue; the spectrum's extremes (the bi-Lipschitz constants of the gradient map)
govern how fast and how far the attack's loss drops and how much image error a small loss allows
(||d||^2 <= 2 L / lambda_min). The *direction* of the correlation with reconstruction quality is an empirical
question answered with :mod:`.correlation`; no column here is pre-oriented.

lambda_min, observed. H_L2 is singular whenever P < D or J has a null space (input directions the gradient
ignores, e.g. a ReLU network whose units are all inactive at x*: J = 0). For DLG's LeNet at 3x32x32
(P = 14,288 > D = 3,072) J had full rank but the spectrum spans 7-9 decades (embedded images 0/9/20, float64
dense: lambda_max/lambda_min of H_L2 = 1.1e8 / 7.2e8 / 1.8e7, of H_cos = 1.1e8 / 1.1e8 / 1.8e7), and the bottom
eigenvalues are clustered (the three smallest of H_cos on image 0: 2.4e-9, 3.1e-9, 3.4e-9).
Krylov methods then do not converge to lambda_min in any affordable number of products: on image 0, after
150 Lanczos steps the smallest Ritz value was ~27x the true lambda_min for both losses (~70x after 100), an
*upper bound* flagged ``converged=False``. lambda_max, by contrast, is well separated and converges in a few
products (4 for LeNet, 13 for ResNet-18 at tol 1e-3). ``method="dense"`` (J materialised, eigvalsh of the
D x D Gauss-Newton forms in float64) is exact and affordable for LeNet-sized models (~12 s per sample on one
CPU thread at 32x32); ResNet-18 (P = 11.2M) needs ``method="lanczos"``, and its lambda_min columns must be
read as upper bounds unless their ``*_converged`` flag is set.

Cost (benchmarks/lavp_cost.py, one CPU thread, 3x32x32): one Hessian-vector product takes ~7 ms (LeNet) /
~0.5 s (ResNet-18); vmapping the products of 8 LeNet samples gives ~500 products/s against ~140/s in a loop,
while for ResNet-18 on CPU vmap is no faster than the loop (use ``vectorize=False`` there).

Labels. The Hessian needs the label the attack matches with. With known labels (the default) it is the true
label. When labels are unknown the attacker recovers them first; pass the samples' own B = 1 observations
(``observations=``) and their labels are taken from them, recovered with iDLG
(:func:`gradaudit.attacks.matching.labels.recover_labels`) when the observation does not carry them. For B = 1
and cross-entropy, iDLG is exact whenever the last layer has a bias (its gradient p - e_y has exactly one
negative entry), so the proxies are then identical to the known-label ones.

The proxies describe the *undefended* single-sample update (g* = g(x*) recomputed from the model, not a
noised or clipped observed update) of a FedSGD client, in the model's normalised input space.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..threat.observation import Observation
from .eigen import EigenResult, eigsh_extreme, lanczos, power_iteration, power_iteration_min
from .hessian import LOSSES, BatchedHessian, GradientMap, SampleHessian, jacobian

Method = Literal["lanczos", "dense", "arpack", "power"]
METHODS: tuple[str, ...] = ("lanczos", "dense", "arpack", "power")
SIDES = {"max": "LA", "min": "SA"}
#: largest Jacobian (in bytes, float64) that method="dense" materialises
DENSE_LIMIT_BYTES = 2 * 2**30
#: columns that are proxies (one float per sample)
PROXY_COLUMNS: tuple[str, ...] = (
    "grad_norm", "l2_max", "l2_min", "cosine_max", "cosine_min",
    "fused_value_max", "fused_value_min", "fused_rank_max", "fused_rank_min")


@dataclass
class ProxyTable:
    """Per-sample proxies: ``rows`` (one plain dict per sample, in input order) and ``meta`` (settings).

    ``column(name)`` gives one column as a float numpy array; ``ranked(name)`` the rows sorted by it.
    """

    rows: list[dict]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []

    @property
    def proxies(self) -> list[str]:
        """The proxy columns present in this table."""
        return [c for c in PROXY_COLUMNS if c in self.columns]

    def column(self, name: str) -> np.ndarray:
        if self.rows and name not in self.rows[0]:
            from ..errors import unknown_name

            raise unknown_name("proxy column", name, self.columns)
        return np.array([r[name] for r in self.rows], dtype=float)

    def ranked(self, name: str, descending: bool = True) -> list[dict]:
        """Rows sorted by column ``name`` (NaN last)."""
        vals = self.column(name)
        key = np.where(np.isnan(vals), -np.inf if descending else np.inf, vals)
        order = np.argsort(-key if descending else key, kind="stable")
        return [self.rows[i] for i in order]

    def to_dicts(self) -> list[dict]:
        return [dict(r) for r in self.rows]


# ----------------------------------------------------------------------------- inputs
def _normaliser(source, data) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """(x - mean) / std from ``data`` (DataSpec / ImageDataset / (mean, std)) or the Observation's DataSpec."""
    if data is None and isinstance(source, Observation):
        data = source.data
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2:
        mean, std = data
    else:
        mean, std = data.mean, data.std

    def norm(x: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - m) / s

    return norm


def recover_sample_labels(observations: Sequence[Observation]) -> tuple[torch.Tensor, list[str]]:
    """One label per single-sample observation: its own labels if granted, else iDLG-recovered.

    Returns (labels [N], sources) with source "given" or the recovery method ("idlg").
    """
    from ..attacks.matching.labels import recover_labels

    labels, sources = [], []
    for i, obs in enumerate(observations):
        if obs.batch_size != 1:
            raise ConfigError(f"observation {i} has batch size {obs.batch_size}; per-sample proxies need the "
                              "update of each sample alone (B = 1)")
        if obs.labels is not None:
            labels.append(int(obs.labels.reshape(-1)[0]))
            sources.append("given")
        else:
            lab, method = recover_labels(obs)
            labels.append(int(lab[0]))
            sources.append(method)
    return torch.tensor(labels, dtype=torch.int64), sources


def _rank(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if ok.any():
        out[ok] = rankdata(v[ok])
    return out


# ----------------------------------------------------------------------------- solvers
def _spectrum_dense(gmap: GradientMap, x: torch.Tensor, y: torch.Tensor, losses, chunk: int
                    ) -> tuple[dict[str, tuple[float, float]], int]:
    """Exact (lambda_max, lambda_min) per loss from the materialised J (Gauss-Newton forms in float64)."""
    J = jacobian(gmap, x, y, chunk=chunk).to(torch.float64)
    g = gmap(x, y).detach().to(torch.float64)
    G = J.T @ J
    out = {}
    for loss in losses:
        if loss == "l2":
            H = 2 * G
        else:
            n2 = float(g @ g)
            c = J.T @ (g / math.sqrt(n2))
            H = (G - torch.outer(c, c)) / n2
        ev = torch.linalg.eigvalsh(0.5 * (H + H.T))
        out[loss] = (float(ev[-1]), float(ev[0]))
    return out, gmap.dim


def compute_proxies(source, images: torch.Tensor, labels=None, *, observations: Sequence[Observation] | None = None,
                    data=None, normalized: bool = False, method: Method = "lanczos",
                    which: Iterable[str] = ("max", "min"), losses: Iterable[str] = LOSSES,
                    tol: float = 1e-3, maxiter: int = 100, batch_size: int = 8, vectorize: bool = True,
                    bn_mode: str = "train", dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None, seed: int = 0,
                    indices: Sequence[int] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> ProxyTable:
    """Gradient norm and LAVPs (lambda_max, lambda_min; L2 and cosine; fused) of every sample.

    Args:
        source: the model at theta: an Observation (theta_0 as broadcast; its DataSpec normalises ``images``),
            a FunctionalVictim, an ``nn.Module`` (needs ``data=``, or ``normalized=True``) or a GradientMap.
        images: [N, C, H, W] in [0, 1] pixel space (normalised with ``data``), or already normalised when
            ``normalized=True``.
        labels: [N] known labels. When None, ``observations`` (one B = 1 Observation per image) supply them,
            iDLG-recovered where not granted (see module docstring).
        method: "lanczos" (batched, default), "dense" (exact; small models), "arpack" (scipy eigsh per
            sample; lambda_min by ARPACK on lambda_max(1 + 1e-3) I - H), "power" (batched power iteration).
        which: subset of ("max", "min"). losses: subset of ("l2", "cosine").
        tol, maxiter: relative residual tolerance and Lanczos steps / power iterations / ARPACK restarts.
        batch_size: samples solved together (one operator per sample and loss; their products run as one
            vmapped call per Lanczos step).
        vectorize: vmap over samples (False: a loop, same numbers; faster for ResNet-18 on CPU).
        bn_mode, dtype, device: how the gradient map is evaluated (:class:`~.hessian.GradientMap`).
        seed: start vectors of the iterative solvers.
        indices: identifiers stored in the ``index`` column (default 0..N-1).
        progress: called with (samples done, N).

    Returns a :class:`ProxyTable`: per sample ``index``, ``label``, ``label_source``, ``grad_norm``,
    ``{loss}_{max,min}`` with ``_converged`` / ``_iterations`` (matrix-vector products) / ``_residual``,
    the ``fused_*`` columns (when both losses are computed) and ``seconds`` (the sample's share of its
    batch's time); ``meta`` records the settings.
    """
    if method not in METHODS:
        from ..errors import unknown_name

        raise unknown_name("proxy method", method, METHODS)
    which = tuple(which)
    losses = tuple(losses)
    if not which or any(w not in SIDES for w in which):
        raise ConfigError(f"which must be a non-empty subset of ('max', 'min'), got {which}")
    if not losses or any(l not in LOSSES for l in losses):
        raise ConfigError(f"losses must be a non-empty subset of {LOSSES}, got {losses}")
    images = torch.as_tensor(images)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    n = images.shape[0]
    # labels
    label_sources: list[str]
    if labels is None:
        if observations is None and isinstance(source, Observation) and source.batch_size == 1 and n == 1:
            observations = [source]
        if observations is None:
            raise ConfigError("labels are needed: pass labels=, or observations= (one B=1 Observation per image, "
                              "from which labels are read or iDLG-recovered)")
        if len(observations) != n:
            raise ConfigError(f"{len(observations)} observations given for {n} images")
        labels, label_sources = recover_sample_labels(observations)
    else:
        labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
        label_sources = ["given"] * n
    if labels.numel() != n:
        raise ConfigError(f"{labels.numel()} labels given for {n} images")
    ids = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(ids) != n:
        raise ConfigError(f"{len(ids)} indices given for {n} images")
    # inputs in normalised space
    if not normalized:
        norm = _normaliser(source, data)
        if norm is None:
            raise ConfigError("images are taken in [0, 1] pixel space: pass data= (a DataSpec, dataset or "
                              "(mean, std)) to normalise them, or normalized=True if they already are")
        images = norm(images.to(torch.float64))
    shape = tuple(images.shape[1:])
    gmap = GradientMap.from_source(source, bn_mode=bn_mode, dtype=dtype, device=device, input_shape=shape)
    if shape != gmap.input_shape:
        raise ConfigError(f"images have shape {shape}, the model expects {gmap.input_shape}")
    xs = images.to(gmap.device, gmap.dtype)
    ys = labels.to(gmap.device)

    t_start = time.perf_counter()
    rows: list[dict] = []
    for s in range(0, n, batch_size):
        t0 = time.perf_counter()
        part = list(range(s, min(n, s + batch_size)))
        results, gnorms = _solve_chunk(gmap, xs[part], ys[part], losses, which, method, tol, maxiter,
                                       vectorize, seed)
        per = (time.perf_counter() - t0) / len(part)
        for k, i in enumerate(part):
            row = {"index": ids[i], "label": int(labels[i]), "label_source": label_sources[i],
                   "grad_norm": float(gnorms[k])}
            for loss in losses:
                for w in which:
                    r: EigenResult = results[k][loss][w]
                    key = f"{loss}_{w}"
                    row[key] = r.value
                    row[f"{key}_converged"] = r.converged
                    row[f"{key}_iterations"] = r.iterations
                    row[f"{key}_residual"] = r.residual
            row["seconds"] = per
            rows.append(row)
        if progress is not None:
            progress(len(rows), n)
    _add_fusion(rows, losses, which)
    meta = {"method": method, "tol": tol, "maxiter": maxiter, "bn_mode": gmap.bn_mode, "dtype": str(gmap.dtype),
            "input_space": "normalised", "num_params": gmap.num_params, "dim": gmap.dim,
            "fusion": "geometric mean of the L2 and cosine values (fused_value_*) and of their per-sample "
                      "ranks within this table, rank 1 = smallest (fused_rank_*)",
            "seconds": time.perf_counter() - t_start, "seed": seed, "vectorize": vectorize}
    return ProxyTable(rows, meta)


def _solve_chunk(gmap: GradientMap, xs, ys, losses, which, method, tol, maxiter, vectorize, seed):
    """Per sample: {loss: {"max"/"min": EigenResult}}, and the gradient norms."""
    m = xs.shape[0]
    out = [{loss: {} for loss in losses} for _ in range(m)]
    if method == "dense":
        need = gmap.num_params * gmap.dim * 8
        if need > DENSE_LIMIT_BYTES:
            raise ConfigError(f"method='dense' would materialise a {gmap.num_params:,} x {gmap.dim} Jacobian "
                              f"({need / 2**30:.1f} GiB in float64); use method='lanczos'")
        gn = []
        for k in range(m):
            spec, products = _spectrum_dense(gmap, xs[k], ys[k], losses, chunk=256)
            for loss, (hi, lo) in spec.items():
                vals = {"max": hi, "min": lo}
                for w in which:
                    out[k][loss][w] = EigenResult(vals[w], products, True, 0.0, "dense", SIDES[w])
            gn.append(float(gmap(xs[k], ys[k]).norm()))
        return out, gn
    # one operator per (sample, loss), all in one batch
    pairs = [(k, loss) for k in range(m) for loss in losses]
    op = BatchedHessian(gmap, xs[[k for k, _ in pairs]], ys[[k for k, _ in pairs]], [l for _, l in pairs],
                        vectorize=vectorize)
    gn = [float(op.g_norm[pairs.index((k, losses[0]))]) for k in range(m)]
    if method == "lanczos":
        mode = "both" if len(which) == 2 else SIDES[which[0]]
        res = lanczos(op, which=mode, tol=tol, maxiter=maxiter, seed=seed)
        for (k, loss), r in zip(pairs, res):
            for w in which:
                out[k][loss][w] = r[SIDES[w]]
    elif method == "power":
        top = power_iteration(op, tol=tol, maxiter=maxiter, seed=seed)
        low = power_iteration_min(op, [t.value for t in top], tol=tol, maxiter=maxiter, seed=seed) \
            if "min" in which else None
        for j, (k, loss) in enumerate(pairs):
            if "max" in which:
                out[k][loss]["max"] = top[j]
            if low is not None:
                low[j].iterations += top[j].iterations
                out[k][loss]["min"] = low[j]
    else:  # arpack, one operator at a time
        for k, loss in pairs:
            H = SampleHessian(gmap, xs[k], ys[k], loss)
            top = eigsh_extreme(H, "LA", tol=tol, maxiter=maxiter, seed=seed)
            if "max" in which:
                out[k][loss]["max"] = top
            if "min" in which:
                out[k][loss]["min"] = eigsh_extreme(H, "SA", tol=tol, maxiter=maxiter, seed=seed,
                                                    shift=top.value * (1 + 1e-3))
    return out, gn


def _add_fusion(rows: list[dict], losses, which) -> None:
    if not ("l2" in losses and "cosine" in losses):
        return
    for w in which:
        a = np.array([r[f"l2_{w}"] for r in rows], dtype=float)
        b = np.array([r[f"cosine_{w}"] for r in rows], dtype=float)
        with np.errstate(invalid="ignore"):
            value = np.sqrt(np.clip(a, 0, None) * np.clip(b, 0, None))
        rank = np.sqrt(_rank(a) * _rank(b))
        for r, v, q in zip(rows, value, rank):
            r[f"fused_value_{w}"] = float(v)
            r[f"fused_rank_{w}"] = float(q)


# ----------------------------------------------------------------------------- the lead's entry point
def rank_samples(dataset, model_spec, indices: Sequence[int] | None = None, *, seed: int = 0,
                 proxy: str = "fused_rank_max", descending: bool = True, **kwargs) -> ProxyTable:
    """Proxies of dataset samples under a freshly initialised victim, sorted by ``proxy``.

    ``dataset``: an :class:`~gradaudit.data.base.ImageDataset` (or a name for
    :func:`~gradaudit.data.load_dataset`); ``model_spec``: a ModelSpec, or a model name (classes and input
    shape from the dataset); the model is built as an audit cell builds it (``torch.manual_seed(seed)`` then
    ``build_model``), so the proxies describe the same theta_0 an attack with that seed faces.
    ``indices``: samples (default: all). ``kwargs`` go to :func:`compute_proxies` (method, which, tol, ...).
    Returns the table with rows sorted by ``proxy`` (``descending``) and ``meta["order"]`` = sorted indices.
    """
    from ..data import load_dataset
    from ..models.registry import ModelSpec, build_model

    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if isinstance(model_spec, str):
        model_spec = ModelSpec(model_spec, ds.num_classes, ds.shape)
    idx = list(range(len(ds))) if indices is None else [int(i) for i in indices]
    torch.manual_seed(seed)
    model = build_model(model_spec)
    images, labels = ds.batch(idx)
    table = compute_proxies(model, images, labels, data=ds, indices=idx, seed=seed, **kwargs)
    if proxy not in table.columns:
        from ..errors import unknown_name

        raise unknown_name("proxy", proxy, table.proxies)
    table = ProxyTable(table.ranked(proxy, descending), dict(table.meta))
    table.meta.update({"model": model_spec.to_dict(), "dataset": ds.name, "model_seed": seed,
                       "sorted_by": proxy, "descending": descending,
                       "order": [r["index"] for r in table.rows]})
    return table
