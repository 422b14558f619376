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
products (4-8 for LeNet, 8-17 for ResNet-18 at tol 1e-3, both losses together). ``method="dense"``
(J materialised, eigvalsh of the D x D Gauss-Newton forms in float64) is exact and affordable for LeNet-sized
models (~12 s per sample on one CPU thread at 32x32); ResNet-18 (P = 11.2M) needs ``method="lanczos"``, and its lambda_min columns must be
read as upper bounds unless their ``*_converged`` flag is set.

lambda_max of both losses from one run. H_L2 = 2 J^T J and H_cos = (J^T J - c c^T) / ||g*||^2 with
c = J^T u: the cosine Hessian is a scaled rank-one downdate of the L2 one along c. Lanczos on H_L2 started at
c builds the same Krylov space as Lanczos on H_cos started at c, and the cosine tridiagonal matrix is the L2
one with its (1, 1) entry lowered (:func:`~.eigen.lanczos`, ``variants``). So ``method="lanczos"`` gets
lambda_max of both losses from the products of one run plus one J^T u; the values equal separate runs to the
tolerance (on the four stored validation studies: within 1e-5 relative, identical ranks). lambda_min keeps
one random-start run per loss (a start at c, which weights directions by their singular values, would
slow the bottom end further).

Cost (benchmarks/lavp_cost.py, one CPU thread, 3x32x32): a Hessian-vector product through the sample's
cached second-order graph (:class:`~.hessian.SampleLinearization`) takes ~3 ms (LeNet) / ~0.33 s
(ResNet-18), against ~6 ms / ~0.56 s by ``torch.func`` jvp + vjp. lambda_max of L2 and cosine together take
a mean of ~9.6 products on ResNet-18 at tol 1e-3 (criterion "gap"; 12 with "residual"), ~3.9 s per sample,
1.4% of a 1000-iteration Inverting Gradients attack on the same sample (1.7% with "residual"). With
``vectorize=True`` (vmap over samples) the products are about as fast for LeNet and ~2x slower for
ResNet-18 on CPU.

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
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..threat.observation import Observation
from .eigen import EigenResult, eigsh_extreme, lanczos, power_iteration, power_iteration_min
from .hessian import LOSSES, BatchedHessian, GradientMap, SampleHessian, SampleLinearization, jacobian

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


def check_proxy_options(*, method: str = "lanczos", which: Iterable[str] = ("max", "min"),
                        losses: Iterable[str] = LOSSES, tol: float = 1e-3, maxiter: int = 100,
                        criterion: str = "gap", batch_size: int = 8, proxy: str | None = None,
                        **_: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Check :func:`compute_proxies`' options (and a ``proxy`` column to rank by) before any work; returns
    (which, losses) as tuples. ConfigError names the first bad option."""
    from ..checks import check_int, check_number

    if method not in METHODS:
        from ..errors import unknown_name

        raise unknown_name("proxy method", method, METHODS)
    if criterion not in ("gap", "residual"):
        raise ConfigError(f"criterion must be 'gap' or 'residual', got '{criterion}'")
    which, losses = tuple(which), tuple(losses)
    if not which or any(w not in SIDES for w in which):
        raise ConfigError(f"which must be a non-empty subset of ('max', 'min'), got {which}")
    if not losses or any(l not in LOSSES for l in losses):
        raise ConfigError(f"losses must be a non-empty subset of {LOSSES}, got {losses}")
    check_number(tol, "tol", positive=True, maximum=1.0)
    check_int(maxiter, "maxiter", 1)
    check_int(batch_size, "batch_size", 1)
    if proxy is not None:
        columns = proxy_columns(which, losses)
        if proxy not in columns:
            from ..errors import unknown_name

            raise unknown_name("proxy", proxy, columns)
    return which, losses


def proxy_columns(which: Iterable[str], losses: Iterable[str] = LOSSES) -> list[str]:
    """The proxy columns :func:`compute_proxies` produces for these eigenvalue sides and losses."""
    which, losses = tuple(which), tuple(losses)
    cols = ["grad_norm"] + [f"{loss}_{w}" for loss in losses for w in which]
    if "l2" in losses and "cosine" in losses:
        cols += [f"fused_{kind}_{w}" for kind in ("value", "rank") for w in which]
    return cols


def compute_proxies(source, images: torch.Tensor, labels=None, *, observations: Sequence[Observation] | None = None,
                    data=None, normalized: bool = False, method: Method = "lanczos",
                    which: Iterable[str] = ("max", "min"), losses: Iterable[str] = LOSSES,
                    tol: float = 1e-3, maxiter: int = 100, batch_size: int = 8, vectorize: bool = False,
                    bn_mode: str = "train", dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None, seed: int = 0,
                    indices: Sequence[int] | None = None, criterion: str = "gap",
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
        tol, maxiter: relative tolerance and Lanczos steps / power iterations / ARPACK restarts.
        criterion: what ``tol`` bounds for Lanczos lambda_max (:func:`~.eigen.lanczos`): "gap" (default), the
            gap-theorem estimate of the relative eigenvalue error, or "residual", the relative residual
            norm (a bound, and 2-3 more products per sample on ResNet-18: ~13 instead of ~10). lambda_min,
            power iteration and ARPACK always use the residual.
        batch_size: with ``vectorize=True``, samples solved together (their products run as one vmapped
            call per Lanczos step); the default loop solves one sample at a time.
        vectorize: False (default): products through each sample's cached second-order graph, one sample
            after another; True: one ``torch.func`` vmap over the batch (same numbers to rounding; on CPU
            about as fast for LeNet and ~2x slower per product for ResNet-18, but no graph held per sample).
        bn_mode, dtype, device: how the gradient map is evaluated (:class:`~.hessian.GradientMap`).
        seed: start vectors of the iterative solvers.
        indices: identifiers stored in the ``index`` column (default 0..N-1).
        progress: called with (samples done, N).

    Returns a :class:`ProxyTable`: per sample ``index``, ``label``, ``label_source``, ``grad_norm``,
    ``{loss}_{max,min}`` with ``_converged`` / ``_iterations`` (matrix-vector products) / ``_residual``,
    the ``fused_*`` columns (when both losses are computed) and ``seconds`` (the sample's share of its
    batch's time); ``meta`` records the settings.
    """
    which, losses = check_proxy_options(method=method, which=which, losses=losses, tol=tol, maxiter=maxiter,
                                        criterion=criterion, batch_size=batch_size)
    images = torch.as_tensor(images)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    n = images.shape[0]
    labels, label_sources = _sample_labels(source, labels, observations, n)
    ids = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(ids) != n:
        raise ConfigError(f"{len(ids)} indices given for {n} images")
    if not normalized:  # inputs in normalised space
        norm = _normaliser(source, data)
        if norm is None:
            raise ConfigError("images are taken in [0, 1] pixel space: pass data= (a DataSpec, dataset or "
                              "(mean, std)) to normalise them, or normalized=True if they already are")
        images = norm(images.to(torch.float64))
    shape = tuple(images.shape[1:])
    gmap = GradientMap.from_source(source, bn_mode=bn_mode, dtype=dtype, device=device, input_shape=shape)
    if shape != gmap.input_shape:
        raise ConfigError(f"images have shape {shape}, the model expects {gmap.input_shape}")
    xs, ys = images.to(gmap.device, gmap.dtype), labels.to(gmap.device)
    t_start = time.perf_counter()
    rows: list[dict] = []
    # Without vmap the samples of a batch share no work, and each holds a second-order graph: solve them one
    # at a time (on ResNet-18 holding 8 graphs made every product ~15% slower).
    step = batch_size if vectorize else 1
    for s in range(0, n, step):
        t0 = time.perf_counter()
        part = list(range(s, min(n, s + step)))
        results, gnorms = _solve_chunk(gmap, xs[part], ys[part], losses, which, method, tol, maxiter,
                                       vectorize, seed, criterion, part)
        per = (time.perf_counter() - t0) / len(part)
        for k, i in enumerate(part):
            rows.append(_proxy_row(ids[i], int(labels[i]), label_sources[i], float(gnorms[k]), results[k],
                                   losses, which, per))
        if progress is not None:
            progress(len(rows), n)
    _add_fusion(rows, losses, which)
    meta = {"method": method, "tol": tol, "criterion": criterion if method == "lanczos" else "residual",
            "maxiter": maxiter, "bn_mode": gmap.bn_mode, "dtype": str(gmap.dtype),
            "input_space": "normalised", "num_params": gmap.num_params, "dim": gmap.dim,
            "fusion": "geometric mean of the L2 and cosine values (fused_value_*) and of their per-sample "
                      "ranks within this table, rank 1 = smallest (fused_rank_*)",
            "seconds": time.perf_counter() - t_start, "seed": seed, "vectorize": vectorize}
    return ProxyTable(rows, meta)


def _sample_labels(source, labels, observations, n: int) -> tuple[torch.Tensor, list[str]]:
    """The labels of the n samples and where each came from ("given", or read / recovered from observations)."""
    if labels is None:
        if observations is None and isinstance(source, Observation) and source.batch_size == 1 and n == 1:
            observations = [source]
        if observations is None:
            raise ConfigError("labels are needed: pass labels=, or observations= (one B=1 Observation per image, "
                              "from which labels are read or iDLG-recovered)")
        if len(observations) != n:
            raise ConfigError(f"{len(observations)} observations given for {n} images")
        labels, sources = recover_sample_labels(observations)
    else:
        labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
        sources = ["given"] * n
    if labels.numel() != n:
        raise ConfigError(f"{labels.numel()} labels given for {n} images")
    return labels, sources


def _proxy_row(index: int, label: int, source: str, gnorm: float, results: dict, losses, which,
               seconds: float) -> dict:
    """One sample's row: its proxies with convergence, products used and residual."""
    row = {"index": index, "label": label, "label_source": source, "grad_norm": gnorm}
    for loss in losses:
        for w in which:
            r: EigenResult = results[loss][w]
            key = f"{loss}_{w}"
            row.update({key: r.value, f"{key}_converged": r.converged, f"{key}_iterations": r.iterations,
                        f"{key}_residual": r.residual})
    row["seconds"] = seconds
    return row


def _solve_chunk(gmap: GradientMap, xs, ys, losses, which, method, tol, maxiter, vectorize, seed, criterion,
                 positions):
    """Per sample: {loss: {"max"/"min": EigenResult}}, and the gradient norms.

    ``positions``: the samples' places in the whole table; Lanczos start vectors are drawn per position, so a
    sample's values do not depend on which batch it was solved in."""
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
    if method == "lanczos":
        gn = None
        # without vmap every sample's products go through its cached graph: build it once for all the runs
        lins = None if vectorize else [SampleLinearization(gmap, x, y) for x, y in zip(xs, ys)]
        if "max" in which:
            top, gn = _joint_lambda_max(gmap, xs, ys, losses, tol, maxiter, vectorize, seed, criterion, positions,
                                        lins)
            for k in range(m):
                for loss in losses:
                    out[k][loss]["max"] = top[k][loss]["LA"]
        if "min" in which:
            low, gn_min = _separate_lanczos(gmap, xs, ys, losses, "SA", tol, maxiter, vectorize, seed, positions,
                                            lins)
            gn = gn if gn is not None else gn_min
            for k in range(m):
                for loss in losses:
                    out[k][loss]["min"] = low[k][loss]["SA"]
        return out, gn
    # one operator per (sample, loss), all in one batch
    pairs = [(k, loss) for k in range(m) for loss in losses]
    op = BatchedHessian(gmap, xs[[k for k, _ in pairs]], ys[[k for k, _ in pairs]], [l for _, l in pairs],
                        vectorize=vectorize)
    gn = [float(op.g_norm[pairs.index((k, losses[0]))]) for k in range(m)]
    if method == "power":
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


def _joint_lambda_max(gmap: GradientMap, xs, ys, losses, tol, maxiter, vectorize, seed, criterion, positions,
                      lins=None):
    """lambda_max of H_L2 and H_cos of every sample from one Lanczos run on H_L2 per sample.

    H_L2 = 2 G and H_cos = (G - c c^T) / ||g*||^2 with G = J^T J and c = J^T u, u = g*/||g*||, so
    H_cos = (H_L2 - 2 c c^T) / (2 ||g*||^2): a scaled rank-one downdate of H_L2 along c. Lanczos on H_L2 started
    at c therefore yields the cosine Ritz values too (:func:`~.eigen.lanczos`, ``variants``), at the cost of one
    extra J^T u per sample. Returns ([{loss: {"LA": EigenResult}}] per sample, gradient norms).
    """
    op = BatchedHessian(gmap, xs, ys, "l2", vectorize=vectorize, linearizations=lins)
    n2 = (op.g_norm.to("cpu", torch.float64) ** 2).clamp_min(torch.finfo(torch.float64).tiny)
    u = op.g_star / op.g_norm.clamp_min(torch.finfo(op.g_star.dtype).tiny)[:, None]
    c = op.pullback(u).to("cpu", torch.float64)  # the solver works on the CPU in float64
    c_norm2 = (c * c).sum(1)
    # a sample whose c vanishes (J^T u = 0) has H_cos = H_L2 / (2 ||g*||^2): any start vector serves
    start = torch.where((c_norm2 > 0)[:, None], c, _starts(positions, c.shape[1], seed))
    variants = {}
    if "l2" in losses:
        variants["l2"] = (1.0, 0.0)
    if "cosine" in losses:
        variants["cosine"] = (1.0 / (2 * n2), 2 * c_norm2)
    res = lanczos(op, which="LA", tol=tol, maxiter=maxiter, start=start, variants=variants, criterion=criterion)
    for r in res:  # the products of the shared run count once per sample; one more for c
        for per_side in r.values():
            per_side["LA"].iterations += 1
    return res, [float(v) for v in op.g_norm]


def _starts(positions, dim: int, seed: int) -> torch.Tensor:
    """One seeded Gaussian start vector per table position ([len(positions), D], float64)."""
    return torch.stack([torch.randn(dim, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(seed * 1_000_003 + int(p)))
                        for p in positions])


def _separate_lanczos(gmap: GradientMap, xs, ys, losses, which, tol, maxiter, vectorize, seed, positions,
                      lins=None):
    """One Lanczos run per (sample, loss) from a seeded random start (per sample), all samples in one batch.

    ``lins``: one cached graph per sample (loop mode), shared by that sample's L2 and cosine operators."""
    m = xs.shape[0]
    pairs = [(k, loss) for k in range(m) for loss in losses]
    op = BatchedHessian(gmap, xs[[k for k, _ in pairs]], ys[[k for k, _ in pairs]], [l for _, l in pairs],
                        vectorize=vectorize, linearizations=None if lins is None else [lins[k] for k, _ in pairs])
    gn = [float(op.g_norm[pairs.index((k, losses[0]))]) for k in range(m)]
    start = _starts([positions[k] for k, _ in pairs], gmap.dim, seed)
    res = lanczos(op, which=which, tol=tol, maxiter=maxiter, start=start)
    out = [{} for _ in range(m)]
    for (k, loss), r in zip(pairs, res):
        out[k][loss] = r
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
                 proxy: str = "fused_rank_max", descending: bool = True, trust_code: bool = False,
                 **kwargs) -> ProxyTable:
    """Proxies of dataset samples under a freshly initialised victim, sorted by ``proxy``.

    ``dataset``: an :class:`~gradaudit.data.base.ImageDataset` (or a name for
    :func:`~gradaudit.data.load_dataset`); ``model_spec``: a ModelSpec, or a model name (classes and input
    shape from the dataset); the model is built as an audit cell builds it (``torch.manual_seed(seed)`` then
    ``build_model``), so the proxies describe the same theta_0 an attack with that seed faces.
    ``indices``: samples (default: all). ``kwargs`` go to :func:`compute_proxies` (method, which, tol, ...).
    ``trust_code``: the model may be a ``package.module:factory`` the caller trusts (:mod:`gradaudit.trust`).
    Every option (the ``proxy`` column included) is checked before any work.
    Returns the table with rows sorted by ``proxy`` (``descending``) and ``meta["order"]`` = sorted indices.
    """
    from ..data import load_dataset
    from ..models.registry import ModelSpec, build_model

    check_proxy_options(proxy=proxy, **kwargs)
    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if isinstance(model_spec, str):
        model_spec = ModelSpec(model_spec, ds.num_classes, ds.shape, trust_code=trust_code)
    elif trust_code:
        model_spec = model_spec.trusted()
    idx = list(range(len(ds))) if indices is None else [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < len(ds)]
    if bad:
        raise ConfigError(f"index {bad[0]} is out of range for a dataset of {len(ds)} samples")
    torch.manual_seed(seed)
    model = build_model(model_spec)
    images, labels = ds.batch(idx)
    table = compute_proxies(model, images, labels, data=ds, indices=idx, seed=seed, **kwargs)
    table = ProxyTable(table.ranked(proxy, descending), dict(table.meta))
    table.meta.update({"model": model_spec.to_dict(), "dataset": ds.name, "model_seed": seed,
                       "sorted_by": proxy, "descending": descending,
                       "order": [r["index"] for r in table.rows]})
    return table
