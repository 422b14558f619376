"""Tensor-based feature reconstruction for a two-layer head (Wang, Lee, Lei, "Reconstructing Training Data from
Model Gradient, Provably", AISTATS 2023; the feature step of seed 002's attack; methods.md section 4 [derived]).

Setting. A head f(h) = sum_j a_j sigma(w_j . h) of width m on features h in R^d, the w_j drawn i.i.d.
N(0, s^2 I) by the server, a_j known, sigma = ReLU. For a batch h_1..h_B with per-sample loss derivatives
r_i = dl/df(h_i), the shared mean gradient of w_j is

    g_j = a_j (1/B) sum_i r_i sigma'(w_j . h_i) h_i.

Moments (Stein's lemma). With u_j = w_j / s ~ N(0, I) and the Hermite tensors He_1(u) = u,
He_3(u) = u(x)u(x)u - sym(u (x) I), Stein's identity E[phi(u) He_k(u)] = E[grad^k phi(u)] applied to
phi(u) = sigma'(s u . h) = 1[u . h > 0] gives, for t = u . h ~ N(0, |h|^2), E[delta(t)] = 1 / (sqrt(2 pi) |h|)
and E[delta''(t)] = -1 / (sqrt(2 pi) |h|^3) (the even orders vanish). So, with g~_j = g_j / a_j,

    M = (1/m) sum_j g~_j (x) He_1(u_j)  ~  sum_i c_i h_i h_i^T,              c_i = r_i / (B sqrt(2 pi) |h_i|),
    T = (1/m) sum_j g~_j (x) He_3(u_j)  ~  sum_i c'_i h_i^{(x)4},            c'_i = -c_i / |h_i|^2.

Algorithm.

1. Subspace P [d, B]. ``subspace="moment"`` (the description of methods.md): the top-B eigenvectors (by
   |eigenvalue|) of the symmetrised M, formed explicitly (d x d) for d <= ``dense_limit``, above by block power
   iteration with the matvec M v = (1/m) G~^T (U v). ``subspace="gradients"`` (default): the top-B singular
   directions of the rows g~_j themselves. Each g~_j is a combination of the h_i, so without noise this span
   is *exact* (the moment's is only accurate to O(1/sqrt(m))), and under noise it is the best rank-B fit.
2. Whitening with M's eigenpairs on P: M_P = P^T M P = Q Lambda Q^T, W = P Q |Lambda|^-1/2 [d, B], so that
   W^T M W = S = diag(sign Lambda). In whitened coordinates the tensor is T_w(x1..x4) = T(W x1, .., W x4).
3. The whitened tensor is never formed (not even its B^4 entries): tensor power iteration needs only the
   contraction T_w(I, x, x, x), which from the m gradient vectors costs O(m B):
   with Gw = G~ W and Uw = U W ([m, B]) and A = W^T W = |Lambda|^-1 (the identity terms of He_3 use the
   *original* inner product u . v = x^T A y),

       T_w(y, x, x, x) = (1/m) sum_j (Gw_j . y) [ (Uw_j . x)^3 - 3 (Uw_j . x) x^T A x ],

   symmetrised over which of the four slots holds g~ (the empirical tensor is symmetric only in
   expectation; see :func:`_contract`). A sweep over B components x R restarts x I iterations costs
   O(m B^2 R I), plus O(m d B) to project the gradients once.
4. Tensor power iteration with deflation, with the sign matrix: x <- S T_w(I, x, x, x), normalise. When all
   c_i share a sign this is the classic orthogonal tensor power method (S = +-I). With mixed signs (residuals
   r_i of both signs, the usual case) the whitened components v_i = sqrt|c_i| W^T h_i are S-orthogonal
   (V^T S V = diag(sign c)), not orthogonal; in the coordinates z_i = v_i . x the update is then
   z_i <- (c'_i / |c_i|^2) sign(c_i) z_i^3: decoupled cubic maps, so the iteration still converges to a
   single component (x = S v_k), cubically fast without noise. Deflation: later searches are restricted to
   the (Euclidean) orthogonal complement of the components found, which sets their z_i = 0 exactly. Each
   component takes the best of ``restarts`` random starts, iterated together as the columns of one [B, R]
   matrix: by default the start that ends closest to a fixed point (``select="residual"``); the classic
   largest |T_w(x,x,x,x)| (``select="value"``) is not comparable across starts when the c_i have mixed signs
   (the x are not S-normalised), and picked spurious blends in our runs.
5. Un-whiten: h_k ~ W^-T S x = P Q |Lambda|^1/2 S x. Features come back up to sign and scale (unit norm here).

Scores. :func:`feature_reconstruction_error` is seed 002's metric: the mean norm of the projection of each
unit-normalised true feature onto the orthogonal complement of the span of the reconstructed features (0 =
every true feature lies in the recovered span). It is blind to how the span is split into features (and,
with ``subspace="gradients"``, ~0 without noise whatever the tensor step does), so
:func:`feature_matching_error` (mean sine to the matched reconstruction) and :func:`feature_cosine_similarity`
(mean |cos| after optimal one-to-one matching) complement it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment

from ...errors import ConfigError


@dataclass
class FeatureReconstruction:
    """Output of :func:`reconstruct_features`.

    Attributes:
        features: [B, d] unit-norm reconstructed features (each up to sign).
        subspace: [d, B] orthonormal basis of the span found from M.
        eigenvalues: [B] the top eigenvalues of M (by magnitude; their signs are those of the c_i).
        strengths: [B] T_w(x, x, x, x) of each component found.
        seconds: wall-clock time.
        centre, centred_features: when the head was centred on mu (see
            :mod:`gradaudit.attacks.features.tensor_attack`): mu [d] and the unit-norm recovered h_i - mu [B, d];
            ``features`` are then mu + s_i (h_i - mu)^ with the scales s_i resolved from the bias gradient.
    """

    features: torch.Tensor
    subspace: torch.Tensor
    eigenvalues: torch.Tensor
    strengths: torch.Tensor
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    centre: torch.Tensor | None = None
    centred_features: torch.Tensor | None = None


def _sym_matvec(g: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(M + M^T)/2 @ v for M = (1/m) G^T U, without forming M."""
    m = g.shape[0]
    return 0.5 * (g.T @ (u @ v) + u.T @ (g @ v)) / m


def gradient_span(g: torch.Tensor, k: int, dense_limit: int = 512, iterations: int = 6,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Orthonormal basis [d, k] of the top-``k`` singular directions of the gradient rows g~_j (each a
    combination of the h_i, so without noise their span is exactly the features' span).

    When both m and d exceed ``dense_limit`` a randomised range finder (block power iteration with k + 10
    columns, ``iterations`` passes, then Rayleigh-Ritz) costs O(m d k) per pass instead of the O(min(m, d)^3)
    of a full decomposition; without noise g has rank k and the range is exact after one pass."""
    m, d = g.shape
    if min(m, d) > dense_limit:
        p = min(d, k + 10)
        basis, _ = torch.linalg.qr(g.T @ (g @ torch.randn(d, p, generator=generator, dtype=g.dtype).to(g.device)))
        for _ in range(iterations):
            basis, _ = torch.linalg.qr(g.T @ (g @ basis))
        small = g @ basis                                     # [m, p]
        evals, evecs = torch.linalg.eigh(small.T @ small)
        return basis @ evecs[:, torch.argsort(evals, descending=True)[:k]]
    if g.shape[0] >= g.shape[1]:
        evals, evecs = torch.linalg.eigh(g.T @ g)
        return evecs[:, torch.argsort(evals, descending=True)[:k]]
    _, _, vh = torch.linalg.svd(g, full_matrices=False)
    return vh[:k].T


def feature_subspace(g: torch.Tensor, u: torch.Tensor, k: int, dense_limit: int = 2048,
                     iterations: int = 100, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs (by |eigenvalue|) of M = sym((1/m) G^T U): (basis [d, k], eigenvalues [k])."""
    d = g.shape[1]
    if d <= dense_limit:
        mat = g.T @ u / g.shape[0]
        mat = 0.5 * (mat + mat.T)
        evals, evecs = torch.linalg.eigh(mat)
        top = torch.argsort(evals.abs(), descending=True)[:k]
        return evecs[:, top], evals[top]
    # block power (subspace) iteration on M, with oversampling, then Rayleigh-Ritz
    p = min(d, k + 10)
    basis, _ = torch.linalg.qr(torch.randn(d, p, generator=generator, dtype=g.dtype).to(g.device))
    for _ in range(iterations):
        basis, _ = torch.linalg.qr(_sym_matvec(g, u, basis))
    small = basis.T @ _sym_matvec(g, u, basis)
    evals, evecs = torch.linalg.eigh(0.5 * (small + small.T))
    top = torch.argsort(evals.abs(), descending=True)[:k]
    return basis @ evecs[:, top], evals[top]


def _contract(gw: torch.Tensor, uw: torch.Tensor, metric: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """T_w(I, x, x, x) of the symmetrised whitened 4th-order moment for every column of x [B, R], O(m B R).

    T(y, x, x, x) with g~ in the first slot: (1/m) sum_j (gw_j . y) [(uw_j . x)^3 - 3 (uw_j . x) x^T A x];
    with g~ in slot 2 (derivative in the first argument of the He_3 part, times the g~ contraction):
    (1/m) sum_j (gw_j . x) [ (uw_j . x)^2 uw_j - uw_j x^T A x - 2 (uw_j . x) A x ]. The symmetrisation over the
    four slots is 1/4 of the first plus 3/4 of the second.
    """
    m = gw.shape[0]
    gx, ux = gw @ x, uw @ x                     # [m, R]
    ax = metric @ x                             # [B, R]
    xax = (x * ax).sum(0)                       # [R]
    first = gw.T @ (ux ** 3 - 3 * ux * xax) / m
    second = (uw.T @ (gx * ux ** 2) - (uw.T @ gx) * xax - 2 * ax * (gx * ux).sum(0)) / m
    return 0.25 * first + 0.75 * second


def _quartic(gw: torch.Tensor, uw: torch.Tensor, metric: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """T_w(x, x, x, x) for every column of x [B, R] -> [R]."""
    ux = uw @ x
    return ((gw @ x) * (ux ** 3 - 3 * ux * (x * (metric @ x)).sum(0))).mean(0)


def reconstruct_features(weights: torch.Tensor, gradients: torch.Tensor, head: torch.Tensor, batch_size: int, *,
                         restarts: int = 8, iterations: int = 30, tol: float = 1e-7, seed: int = 0,
                         subspace: str = "gradients", select: str = "residual", dense_limit: int = 2048,
                         min_head: float = 1e-12) -> FeatureReconstruction:
    """Recover the B input features of a two-layer ReLU head from its first-layer gradient.

    Args:
        weights: [m, d] the Gaussian first-layer weights w_j (any common scale s: they are standardised).
        gradients: [m, d] the observed gradients g_j of the w_j (mean over the batch, or any common scale).
        head: [m] the second-layer weights a_j (known to the server); rows with |a_j| <= min_head are dropped.
        batch_size: B, the number of features to recover (B <= d).
        restarts, iterations, tol: tensor power iteration: random starts per component, steps per start, and
            the stopping tolerance on the change of x.
        subspace: "gradients" (the top-B singular directions of the g~_j, exact without noise; M is then only
            used on that subspace, for whitening) or "moment" (the top-B eigenvectors of M, as in the moment
            method's description).
        select: which restart a component keeps: "residual" (closest to a fixed point) or "value" (largest
            |T_w(x, x, x, x)|).
    """
    t0 = time.perf_counter()
    if weights.dim() != 2 or gradients.shape != weights.shape or head.shape != (weights.shape[0],):
        raise ConfigError(f"reconstruct_features needs weights and gradients [m, d] and head [m], got "
                          f"{tuple(weights.shape)}, {tuple(gradients.shape)}, {tuple(head.shape)}")
    m, d = weights.shape
    if not 1 <= batch_size <= d:
        raise ConfigError(f"reconstruct_features needs 1 <= B <= d = {d}, got B = {batch_size}")
    keep = head.abs() > min_head
    if int(keep.sum()) < batch_size:
        raise ConfigError("reconstruct_features: too few hidden units with a non-zero head weight")
    dt = torch.float64
    u = weights[keep].to(dt)
    u = u / u.std()                                           # u_j = w_j / s ~ N(0, I)
    g = gradients[keep].to(dt) / head[keep].to(dt)[:, None]   # g~_j = g_j / a_j
    gen = torch.Generator().manual_seed(seed)
    if subspace == "moment":
        basis, evals = feature_subspace(g, u, batch_size, dense_limit=dense_limit, generator=gen)
    elif subspace == "gradients":
        span = gradient_span(g, batch_size, generator=gen)    # [d, B]
        small = (g @ span).T @ (u @ span) / g.shape[0]        # P^T M P
        evals, evecs = torch.linalg.eigh(0.5 * (small + small.T))
        top = torch.argsort(evals.abs(), descending=True)
        basis, evals = span @ evecs[:, top], evals[top]
    else:
        raise ConfigError(f"reconstruct_features subspace must be 'gradients' or 'moment', got '{subspace}'")
    if select not in ("residual", "value"):
        raise ConfigError(f"reconstruct_features select must be 'residual' or 'value', got '{select}'")
    # whitening W = P Q |Lambda|^-1/2 (basis already holds P Q: eigenvectors of M)
    inv_sqrt = evals.abs().clamp_min(1e-300).rsqrt()
    whitening = basis * inv_sqrt[None, :]                     # [d, B]
    signs = torch.sign(evals)
    gw, uw = g @ whitening, u @ whitening                     # [m, B]
    metric = torch.diag(inv_sqrt ** 2)                        # W^T W = |Lambda|^-1
    found: list[torch.Tensor] = []
    strengths: list[float] = []
    for _ in range(batch_size):
        # all restarts at once: the columns of x [B, R]
        complement = None
        if found:  # deflation: stay orthogonal to the components v = S x found so far
            complement, _ = torch.linalg.qr(torch.stack([signs * f for f in found], 1))
        x = torch.randn(batch_size, restarts, generator=gen, dtype=dt)
        if complement is not None:
            x = x - complement @ (complement.T @ x)
        active = torch.arange(restarts)                   # columns still moving
        for _ in range(iterations):
            xa = x[:, active]
            x_new = signs[:, None] * _contract(gw, uw, metric, xa)
            if complement is not None:
                x_new = x_new - complement @ (complement.T @ x_new)
            x_new = x_new / x_new.norm(dim=0, keepdim=True).clamp_min(1e-300)
            # compare up to sign (the map is odd; with mixed signs it may flip every step)
            change = torch.minimum((x_new - xa).norm(dim=0), (x_new + xa).norm(dim=0))
            x[:, active] = x_new
            active = active[change >= tol]
            if active.numel() == 0:
                break
        values = _quartic(gw, uw, metric, x).abs()
        if select == "residual":
            step = signs[:, None] * _contract(gw, uw, metric, x)
            if complement is not None:
                step = step - complement @ (complement.T @ step)
            step = step / step.norm(dim=0, keepdim=True).clamp_min(1e-300)
            score = -torch.minimum((step - x).norm(dim=0), (step + x).norm(dim=0))
        else:
            score = values
        score = torch.where(torch.isfinite(score), score, torch.full_like(score, -float("inf")))
        best = int(score.argmax())
        found.append(x[:, best])
        strengths.append(float(values[best]))
    # un-whiten: h ~ W^-T S x = P Q |Lambda|^1/2 S x
    sqrt_l = evals.abs().sqrt()
    feats = torch.stack([basis @ (sqrt_l * signs * x) for x in found])
    feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return FeatureReconstruction(
        features=feats.to(torch.float32), subspace=basis.to(torch.float32), eigenvalues=evals.to(torch.float32),
        strengths=torch.tensor(strengths, dtype=torch.float32), seconds=time.perf_counter() - t0,
        config={"m": int(keep.sum()), "d": d, "B": batch_size, "restarts": restarts, "iterations": iterations,
                "seed": seed, "subspace": subspace, "select": select,
                "negative_eigenvalues": int((evals < 0).sum())})


def feature_reconstruction_error(true_features: torch.Tensor, reconstructed: torch.Tensor,
                                 rtol: float = 1e-6) -> float:
    """Seed 002's metric: mean_i || (I - P_S) h_i / |h_i| ||, S = span of the reconstructed features.

    ``true_features`` [B, d], ``reconstructed`` [K, d] (any K, any order, any signs and scales). Directions of
    the reconstruction with singular value below ``rtol`` times the largest do not count toward the span.
    """
    t = true_features.to(torch.float64)
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-300)
    r = reconstructed.to(torch.float64)
    if r.numel() == 0:
        return 1.0
    uu, s, _ = torch.linalg.svd(r.T, full_matrices=False)
    basis = uu[:, s > rtol * s.max()] if s.max() > 0 else uu[:, :0]
    resid = t - (t @ basis) @ basis.T
    return float(resid.norm(dim=1).mean())


def feature_matching_error(true_features: torch.Tensor, reconstructed: torch.Tensor) -> float:
    """Per-feature version of :func:`feature_reconstruction_error`: mean_i sin(angle(h_i, h_hat_pi(i))) after the
    optimal one-to-one matching pi (maximal total |cos|): the distance of each unit true feature to the *line* of
    its own reconstruction, so it also counts features that are mixed within the right span. >= the span error.
    """
    t = true_features.to(torch.float64)
    r = reconstructed.to(torch.float64)
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-300)
    r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = (t @ r.T).abs().clamp(max=1.0)
    rows, cols = linear_sum_assignment(-cos.numpy())
    matched = torch.zeros(t.shape[0], dtype=torch.float64)
    matched[torch.as_tensor(rows)] = cos[torch.as_tensor(rows), torch.as_tensor(cols)]
    return float((1 - matched ** 2).clamp_min(0).sqrt().mean())


def feature_cosine_similarity(true_features: torch.Tensor, reconstructed: torch.Tensor) -> float:
    """Mean |cos| between true and reconstructed features after optimal one-to-one matching (1 = all found)."""
    t = true_features.to(torch.float64)
    r = reconstructed.to(torch.float64)
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-300)
    r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = (t @ r.T).abs().numpy()
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].sum() / t.shape[0])


def two_layer_gradients(features: torch.Tensor, weights: torch.Tensor, head: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
    """The mean gradient of the w_j for f(h) = sum_j a_j relu(w_j . h) under the square loss 1/2 (f - y)^2.

    A synthetic client for validating :func:`reconstruct_features`: features [B, d], weights [m, d], head [m],
    targets [B] -> gradients [m, d], g_j = a_j (1/B) sum_i r_i 1[w_j . h_i > 0] h_i with r_i = f(h_i) - y_i.
    """
    pre = features @ weights.T                               # [B, m]
    out = torch.relu(pre) @ head                             # [B]
    r = out - targets                                        # [B]
    active = (pre > 0).to(features.dtype)                    # [B, m]
    return head[:, None] * ((active * r[:, None]).T @ features) / features.shape[0]


def synthetic_two_layer(d: int, batch_size: int, width: int, seed: int = 0, noise: float = 0.0,
                        dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """A synthetic observation for the tensor attack: unit-norm Gaussian features h_i in R^d, Gaussian
    w_j ~ N(0, I), head a_j = +-1/m (random signs), targets y_i = +-1 (random signs), square loss.

    The head is small (|f(h)| ~ 1/sqrt(m)), so the residuals r_i = f(h_i) - y_i are ~ -y_i: every sample
    carries signal, with both signs. (With a_j = +-1/sqrt(m), f(h) ~ N(0, 1/2) and a sample whose f(h_i)
    happens to be close to y_i has r_i ~ 0: it leaves almost no trace in the gradient and cannot be
    recovered; a server choosing the head avoids this.)

    Returns a dict with ``features`` [B, d], ``weights`` [m, d], ``head`` [m], ``gradients`` [m, d]
    (plus Gaussian noise of std ``noise`` times the gradients' rms, a noise defense, when noise > 0).
    """
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch_size, d, generator=gen, dtype=dtype)
    h = h / h.norm(dim=1, keepdim=True)
    w = torch.randn(width, d, generator=gen, dtype=dtype)
    a = (torch.randint(0, 2, (width,), generator=gen) * 2 - 1).to(dtype) / width
    y = (torch.randint(0, 2, (batch_size,), generator=gen) * 2 - 1).to(dtype)
    g = two_layer_gradients(h, w, a, y)
    if noise > 0:
        g = g + noise * g.pow(2).mean().sqrt() * torch.randn(g.shape, generator=gen, dtype=dtype)
    return {"features": h, "weights": w, "head": a, "gradients": g, "targets": y}


__all__ = ["FeatureReconstruction", "reconstruct_features", "feature_subspace", "gradient_span",
           "feature_reconstruction_error", "feature_matching_error", "feature_cosine_similarity",
           "two_layer_gradients", "synthetic_two_layer"]
