"""Extreme eigenvalues of a symmetric (PSD) operator known only through matrix-vector products.

Used for the loss-aware vulnerability proxy (LAVP) of Hong et al., arXiv 2312.12488 (seed 000): lambda_max and
lambda_min of the matching-loss Hessian H at the ground truth, which is far too large to form for real models
(D = 3072 at 32x32x3 is formable, but every column costs a Hessian-vector product).

Three solvers, each returning :class:`EigenResult` (value, iterations = matrix-vector products, converged,
residual ||H x - theta x|| of the returned Ritz pair with ||x|| = 1):

* :func:`eigsh_extreme` - implicitly restarted Lanczos (ARPACK through ``scipy.sparse.linalg.eigsh`` on a
  ``LinearOperator``), ``which="LA"`` (largest) or ``"SA"`` (smallest algebraic). Convergence is ARPACK's:
  ||r|| <= tol * |theta|. When ARPACK stops without converging, the best Ritz value of a plain Lanczos run
  with the same budget is returned with ``converged=False``.
* :func:`lanczos` - Lanczos with full re-orthogonalisation, written in torch and *batched*: N independent
  operators (one per sample, e.g. a :class:`~gradaudit.proxies.hessian.BatchedHessian`) advance together, one
  vmapped product per step; samples leave the batch as soon as they converge. After m steps the tridiagonal
  T_m = Q^T H Q has Ritz pairs (theta_i, s_i); the residual of Ritz pair i is |beta_m s_i[m]| (exact
  arithmetic identity), and a value counts as converged when that residual <= max(tol |theta|, atol). One
  Krylov space yields both ends of the spectrum, so ``which="both"`` costs no more products than one end.
  Given a start vector q1, the same space also yields every operator scale * (H - d q1 q1^T) (``variants``):
  the L2 and cosine Hessians of a sample are one such pair, so both cost the products of one run.
* :func:`power_iteration` (lambda_max; v <- Hv/||Hv||, Rayleigh quotient) and :func:`power_iteration_min`
  (lambda_min as c - lambda_max(c I - H), c an upper bound of lambda_max). Power iteration converges at rate
  lambda_2/lambda_1, and for the minimum at (c - lambda_{D-1})/(c - lambda_D), which is ~1 for an
  ill-conditioned H: expect ``converged=False`` for lambda_min of real networks; Lanczos is far better there.

Small eigenvalues. By Weyl / Kahan, some eigenvalue of H lies within the residual of every Ritz value, so
a converged lambda_min is accurate to about tol relative. With float32 Hessian-vector products the products
themselves carry relative noise ~1e-7 * lambda_max, so a lambda_min below ~1e-6 * lambda_max cannot be
resolved in float32 (use ``dtype=torch.float64`` in the gradient map, or read lambda_min as "at most this").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError

Which = Literal["LA", "SA"]


@dataclass
class EigenResult:
    """An extreme eigenvalue estimate: ``value``, matrix-vector products used, convergence and residual."""

    value: float
    iterations: int
    converged: bool
    residual: float
    method: str
    which: str

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- operator adapters
class _Single:
    """A [D] -> [D] matvec (or a dense matrix) seen as a batch of one operator."""

    def __init__(self, matvec, dim: int | None = None) -> None:
        if isinstance(matvec, np.ndarray):
            matvec = torch.as_tensor(matvec)
        if isinstance(matvec, torch.Tensor):
            M = matvec
            if M.dim() != 2 or M.shape[0] != M.shape[1]:
                raise ConfigError(f"a matrix operator must be square, got shape {tuple(M.shape)}")
            self.dim = M.shape[0]
            self.f = lambda v: M @ v.to(M)  # noqa: E731
            self.dtype = M.dtype
        else:
            self.dim = int(dim if dim is not None else getattr(matvec, "dim"))
            self.f = matvec
            self.dtype = None
        self.n = 1

    def __call__(self, V: torch.Tensor, rows=None) -> torch.Tensor:
        return torch.stack([self.f(v).reshape(-1) for v in V])


def _as_batched(op, dim: int | None) -> tuple[object, bool]:
    """(batched operator with .n/.dim and op(V, rows), whether the caller passed a batched one)."""
    if isinstance(op, _Single):
        return op, False
    if hasattr(op, "n") and hasattr(op, "dim") and callable(op) and not isinstance(op, (torch.Tensor, np.ndarray)):
        return op, True
    if dim is None and not isinstance(op, (torch.Tensor, np.ndarray)) and not hasattr(op, "dim"):
        raise ConfigError("pass dim= for a plain matvec function")
    return _Single(op, dim), False


def _apply(op, V: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    out = op(V if isinstance(op, _Single) else V.to(getattr(op, "x_stars", V).dtype), rows)
    # the solver's state (Krylov basis, tridiagonal matrix) lives on the CPU in float64, whatever device the
    # operator runs on; products come back here (D numbers per sample, cheap next to the product itself)
    return torch.as_tensor(out).to(device=V.device, dtype=torch.float64).reshape(V.shape)


def _start(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------- ARPACK
def eigsh_extreme(op, which: Which = "LA", *, dim: int | None = None, tol: float = 1e-4,
                  maxiter: int | None = None, ncv: int | None = None, seed: int = 0,
                  shift: float | None = None) -> EigenResult:
    """One extreme eigenvalue of a single symmetric operator by ARPACK (``scipy.sparse.linalg.eigsh``).

    ``op``: a [D] -> [D] callable (e.g. :class:`~gradaudit.proxies.hessian.SampleHessian`), or a matrix.
    ``which``: "LA" (largest) or "SA" (smallest algebraic). ``tol``: ARPACK's relative tolerance.
    ``maxiter``: ARPACK restarts (scipy's default 10 D when None). ``iterations`` counts products.
    ``shift`` (with "SA"): compute lambda_min as shift - lambda_max(shift I - H) instead; ARPACK then resolves
    it only to ~tol * shift, so ``converged`` is re-judged as residual <= tol * |lambda_min|.

    Pitfall (seen with scipy's ARPACK): with ``which="SA"`` and tol > 0 on a *singular* PSD matrix, ARPACK can
    report the smallest *nonzero* eigenvalue as converged, because its relative test ||r|| <= tol |theta| can
    never pass for the zero Ritz values. Use ``shift`` (accuracy then tol * shift in absolute terms) or
    :func:`lanczos` (with ``atol``) when lambda_min may be 0.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    if which not in ("LA", "SA"):
        raise ConfigError(f"which must be 'LA' or 'SA', got '{which}'")
    single, batched = _as_batched(op, dim)
    if batched:
        raise ConfigError("eigsh_extreme takes one operator; loop over samples or use lanczos() for a batch")
    D = single.dim
    count = {"n": 0}
    if shift is not None and which != "SA":
        raise ConfigError("shift is only used for which='SA'")

    def mv(v):
        count["n"] += 1
        t = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(1, -1))
        return _apply(single, t, torch.zeros(1, dtype=torch.int64))[0].numpy()

    if shift is not None:
        shifted = _Single(lambda v: shift * v.to(torch.float64) - _apply(single, v.reshape(1, -1).to(torch.float64),
                                                                          torch.zeros(1, dtype=torch.int64))[0], D)
        r = eigsh_extreme(shifted, "LA", tol=tol, maxiter=maxiter, ncv=ncv, seed=seed)
        value = float(shift - r.value)
        # ARPACK's test was relative to shift - value; report convergence relative to the value itself
        ok = r.converged and r.residual <= tol * abs(value)
        return EigenResult(value, r.iterations, ok, r.residual, r.method + "-shifted", "SA")

    if D <= 2:  # ARPACK needs k < D; tiny operators are solved densely
        M = np.stack([mv(e) for e in np.eye(D)], 1)
        vals = np.linalg.eigvalsh(0.5 * (M + M.T))
        return EigenResult(float(vals[-1] if which == "LA" else vals[0]), count["n"], True, 0.0, "dense", which)
    A = LinearOperator((D, D), matvec=mv, dtype=np.float64)
    v0 = _start(1, D, seed)[0].numpy()
    try:
        vals, vecs = eigsh(A, k=1, which=which, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0)
    except ArpackNoConvergence:
        used = count["n"]
        res = lanczos(single, which=which, tol=tol, maxiter=max(2, min(used, D)), seed=seed)[0][which]
        return EigenResult(res.value, used + res.iterations, False, res.residual, "arpack+lanczos", which)
    x = vecs[:, 0]
    r = float(np.linalg.norm(mv(x) - vals[0] * x) / np.linalg.norm(x))
    return EigenResult(float(vals[0]), count["n"], True, r, "arpack", which)


# --------------------------------------------------------------------------- batched Lanczos
def lanczos(op, which: Literal["LA", "SA", "both"] = "both", *, dim: int | None = None, tol: float = 1e-3,
            atol: float = 0.0, maxiter: int = 100, seed: int = 0, start: torch.Tensor | None = None,
            variants: Mapping[str, tuple] | None = None,
            criterion: Literal["residual", "gap"] = "residual") -> list[dict]:
    """Extreme eigenvalues of N symmetric operators by Lanczos with full re-orthogonalisation.

    ``op``: a batched operator (``op(V [m, D], rows) -> [m, D]``, with ``.n`` and ``.dim``, e.g.
    :class:`~gradaudit.proxies.hessian.BatchedHessian`), or a single [D] -> [D] callable / matrix (N = 1).
    ``which``: "LA", "SA" or "both". A sample stops when each requested end has residual
    <= max(tol |theta|, atol), when its Krylov space is exhausted (beta ~ 0: exact), or after ``maxiter``
    steps (capped at D). Returns, per operator, {"LA": EigenResult, "SA": EigenResult} (requested keys only);
    ``iterations`` is the number of products that operator used.

    ``criterion`` decides what is compared with ``tol |theta|``:

    * "residual" (default): r = |beta_k s[k]|, the Ritz pair's residual norm. Some eigenvalue lies within r
      of theta (Weyl), so this bounds the error whatever the rest of the spectrum.
    * "gap": the gap-theorem estimate min(r, r^2 / delta) of the eigenvalue error (Parlett, *The Symmetric
      Eigenvalue Problem*, 1998, sec. 11.7; Kato-Temple), with the gap delta to the rest of the spectrum
      estimated from the Ritz values as |theta_1 - theta_2| - r_2 (theta_2 the next Ritz value at that end,
      r_2 its residual; r alone is used while that is <= 0). Ritz values converge quadratically in the
      residual, so this stops earlier for a well separated extreme eigenvalue; it is an estimate, not a bound
      (the true gap can be smaller than the estimated one while theta_2 is far from converged). On the
      ResNet-18 matching-loss Hessians it was above the true error at every step (benchmarks/lavp_cost.py).
    The ``residual`` field of each result is always r.

    ``start``: [N, D] start vectors (default: seeded Gaussian). ``variants``: solve a *family* of operators
    from the one Krylov space. Each entry ``name: (scale, downdate)`` (floats or [N] tensors) stands for

        M = scale * (A - downdate * q1 q1^T),      q1 = start / ||start||,

    where A is ``op``. Because q1 lies in the Krylov space K_k(A, q1) and (A - d q1 q1^T) maps K_k into
    K_{k+1}, K_k(M, q1) = K_k(A, q1), and the Lanczos matrix of M is exactly scale * (T_k - downdate e1 e1^T):
    one run gives every member's Ritz values (and their residuals scale * |beta_k s[k]|) for the products of
    one. The matching-loss Hessians are such a family: H_L2 = 2 J^T J and H_cos = (J^T J - c c^T) / ||g*||^2
    with c = J^T g* / ||g*|| (see :mod:`gradaudit.proxies.lavp`). With ``variants`` the result per operator is
    {name: {side: EigenResult}} and an operator stops when every member has converged.
    """
    _check_lanczos(which, maxiter, tol, atol, criterion, variants)
    op, _ = _as_batched(op, dim)
    n, D = int(op.n), int(op.dim)
    sides = ("LA", "SA") if which == "both" else (which,)
    family = variants is not None
    members = _variant_members(variants, n)
    m = min(maxiter, D)
    Q = torch.zeros(n, m + 1, D, dtype=torch.float64)
    alpha = torch.zeros(n, m, dtype=torch.float64)
    beta = torch.zeros(n, m, dtype=torch.float64)
    Q[:, 0] = _start(n, D, seed) if start is None else _normalised_start(start, n, D)
    done = torch.zeros(n, dtype=torch.bool)
    out: list[dict] = [{} for _ in range(n)]
    for j in range(m):
        rows = torch.nonzero(~done).flatten()
        if rows.numel() == 0:
            break
        w, b = _lanczos_step(op, Q, alpha, beta, rows, j)
        k = j + 1
        T = torch.diag_embed(alpha[rows, :k])
        if k > 1:
            off = torch.diag_embed(beta[rows, : k - 1], offset=1)
            T = T + off + off.transpose(1, 2)
        scale_T = torch.linalg.eigvalsh(T).abs().max(1).values
        exhausted = b <= 1e-12 * scale_T.clamp_min(1e-300) + 1e-300
        ritz, ok = _ritz_check(T, b, members, rows, sides, criterion, tol, atol, exhausted)
        finished = torch.stack(list(ok.values())).all(0) | exhausted | (k == m)
        for r_i, row in enumerate(rows.tolist()):
            if bool(finished[r_i]):
                done[row] = True
                _record(out[row], ritz, ok, r_i, k, sides, family)
        live = ~finished & (b > 0)
        Q[rows[live], j + 1] = w[live] / b[live][:, None]
    return out


def _check_lanczos(which, maxiter: int, tol: float, atol: float, criterion: str, variants) -> None:
    if which not in ("LA", "SA", "both"):
        raise ConfigError(f"which must be 'LA', 'SA' or 'both', got '{which}'")
    if maxiter < 1 or tol < 0 or atol < 0:
        raise ConfigError("lanczos needs maxiter >= 1, tol >= 0 and atol >= 0")
    if criterion not in ("residual", "gap"):
        raise ConfigError(f"criterion must be 'residual' or 'gap', got '{criterion}'")
    if variants is not None and not variants:
        raise ConfigError("variants must name at least one operator")


def _variant_members(variants, n: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (scale [n], downdate [n]) in float64 on the CPU; one plain member "" without variants."""
    members = {}
    for name, spec in (variants or {"": (1.0, 0.0)}).items():
        if len(spec) != 2:
            raise ConfigError(f"variant '{name}' must be (scale, downdate), got {spec!r}")
        members[name] = tuple(torch.as_tensor(v, dtype=torch.float64, device="cpu").reshape(-1).expand(n).clone()
                              for v in spec)
    return members


def _normalised_start(start, n: int, D: int) -> torch.Tensor:
    start = torch.as_tensor(start, dtype=torch.float64, device="cpu").reshape(n, D)
    norms = start.norm(dim=1, keepdim=True)
    if not bool((norms > 0).all()) or not bool(torch.isfinite(start).all()):
        raise ConfigError("lanczos start vectors must be finite and non-zero")
    return start / norms


def _lanczos_step(op, Q, alpha, beta, rows, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One Lanczos step for the live ``rows``: alpha_j, beta_j (stored) and the next, unnormalised vector."""
    q = Q[rows, j]
    w = _apply(op, q, rows)
    a = (q * w).sum(1)
    w = w - a[:, None] * q
    if j > 0:
        w = w - beta[rows, j - 1][:, None] * Q[rows, j - 1]
    basis = Q[rows, : j + 1]
    for _ in range(2):  # full re-orthogonalisation (twice is enough)
        w = w - torch.einsum("nkd,nk->nd", basis, torch.einsum("nkd,nd->nk", basis, w))
    b = w.norm(dim=1)
    alpha[rows, j], beta[rows, j] = a, b
    return w, b


def _ritz_check(T, b, members, rows, sides, criterion: str, tol: float, atol: float, exhausted):
    """Every member's Ritz values and residuals from the Lanczos matrix T, and whether each end converged."""
    k = T.shape[-1]
    ritz, ok = {}, {}
    for name, (scale, down) in members.items():
        Tm = T.clone()
        Tm[:, 0, 0] -= down[rows]
        theta, S = torch.linalg.eigh(Tm)
        sc = scale[rows][:, None]
        theta, res = sc * theta, (sc * b[:, None] * S[:, -1, :]).abs()
        if bool((sc < 0).any()):  # a negative scale reverses the order of the Ritz values
            theta, res = torch.where(sc < 0, theta.flip(1), theta), torch.where(sc < 0, res.flip(1), res)
        ritz[name] = (theta, res)
        for side in sides:
            i = -1 if side == "LA" else 0
            err = res[:, i]
            if criterion == "gap" and k > 1:
                nxt = -2 if side == "LA" else 1
                gap = (theta[:, i] - theta[:, nxt]).abs() - res[:, nxt]
                err = torch.where(gap > 0, torch.minimum(err, err ** 2 / gap.clamp_min(1e-300)), err)
            ok[name, side] = (err <= torch.clamp(tol * theta[:, i].abs(), min=atol)) | exhausted
    return ritz, ok


def _record(slot_root: dict, ritz, ok, r_i: int, k: int, sides, family: bool) -> None:
    """A finished operator's EigenResults (per member with ``variants``)."""
    for name, (theta, res) in ritz.items():
        slot = slot_root.setdefault(name, {}) if family else slot_root
        for side in sides:
            i = -1 if side == "LA" else 0
            slot[side] = EigenResult(float(theta[r_i, i]), k, bool(ok[name, side][r_i]), float(res[r_i, i]),
                                     "lanczos", side)


# --------------------------------------------------------------------------- power iteration
def _power(op, n: int, D: int, shift: torch.Tensor | None, tol: float, maxiter: int, seed: int,
           which: str, method: str) -> list[EigenResult]:
    """Largest eigenvalue of (shift I - H) if shift is given, else of H, for N operators together.

    Stops an operator when ||B v - t v|| <= tol |value|, value = t (no shift) or shift - t (shifted)."""
    v = _start(n, D, seed)
    theta = torch.zeros(n, dtype=torch.float64)
    res = torch.full((n,), float("inf"), dtype=torch.float64)
    iters = torch.zeros(n, dtype=torch.int64)
    done = torch.zeros(n, dtype=torch.bool)
    conv = torch.zeros(n, dtype=torch.bool)
    for it in range(maxiter):
        rows = torch.nonzero(~done).flatten()
        if rows.numel() == 0:
            break
        x = v[rows]
        w = _apply(op, x, rows)
        if shift is not None:
            w = shift[rows, None] * x - w
        t = (x * w).sum(1)
        r = (w - t[:, None] * x).norm(dim=1)
        theta[rows], res[rows], iters[rows] = t, r, it + 1
        value = t if shift is None else shift[rows] - t
        c = r <= tol * value.abs()
        conv[rows] = c
        done[rows] = c
        nw = w.norm(dim=1, keepdim=True)
        v[rows] = torch.where(nw > 0, w / nw.clamp_min(1e-300), x)
        done[rows[nw.flatten() == 0]] = True
    vals = theta if shift is None else shift - theta
    return [EigenResult(float(vals[i]), int(iters[i]), bool(conv[i]), float(res[i]), method, which)
            for i in range(n)]


def power_iteration(op, *, dim: int | None = None, tol: float = 1e-4, maxiter: int = 200,
                    seed: int = 0) -> list[EigenResult] | EigenResult:
    """lambda_max by power iteration (stops when ||Hv - theta v|| <= tol theta). Batched like :func:`lanczos`."""
    bop, batched = _as_batched(op, dim)
    out = _power(bop, int(bop.n), int(bop.dim), None, tol, maxiter, seed, "LA", "power")
    return out if batched else out[0]


def power_iteration_min(op, lam_max: float | Sequence[float] | None = None, *, dim: int | None = None,
                        tol: float = 1e-4, maxiter: int = 500, seed: int = 0,
                        margin: float = 1e-3) -> list[EigenResult] | EigenResult:
    """lambda_min = c - lambda_max(c I - H) by power iteration, c = (1 + margin) lambda_max (PSD H).

    ``lam_max``: known lambda_max per operator (computed by :func:`power_iteration` when None). Iteration
    stops when the residual <= tol * |lambda_min estimate| (the same meaning of ``converged`` as for the other
    solvers), which a small lambda_min rarely reaches within ``maxiter``.
    """
    bop, batched = _as_batched(op, dim)
    n, D = int(bop.n), int(bop.dim)
    if lam_max is None:
        top = _power(bop, n, D, None, tol, maxiter, seed, "LA", "power")
        lam = torch.tensor([r.value for r in top], dtype=torch.float64)
        extra = [r.iterations for r in top]
    else:
        lam = torch.as_tensor(lam_max, dtype=torch.float64).reshape(-1).expand(n).clone()
        extra = [0] * n
    shift = lam.abs() * (1 + margin)
    out = _power(bop, n, D, shift, tol, maxiter, seed + 1, "SA", "power-shifted")
    for r, e in zip(out, extra):
        r.iterations += e
    return out if batched else out[0]

