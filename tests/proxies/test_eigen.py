"""Extreme eigenvalues from matrix-vector products, against numpy.linalg.eigvalsh."""

import numpy as np
import pytest
import torch

from gradaudit.errors import ConfigError
from gradaudit.proxies.eigen import eigsh_extreme, lanczos, power_iteration, power_iteration_min
from gradaudit.proxies.hessian import batched_hvp_fn, dense_hessian, hvp_fn

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def psd(n: int, rank: int | None = None, seed: int = 0, spread: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rank or n + 10, n)) * np.linspace(1, spread, n)
    return A.T @ A


class Batch:
    """N dense matrices as a batched operator (rows = which matrices to apply)."""

    def __init__(self, mats):
        self.M = torch.as_tensor(np.stack(mats))
        self.n, self.dim = self.M.shape[0], self.M.shape[1]
        self.calls = []

    def __call__(self, V, rows):
        self.calls.append(len(rows))
        return torch.einsum("nij,nj->ni", self.M[rows], V)


@pytest.mark.parametrize("seed", [0, 1])
def test_arpack_and_lanczos_match_eigvalsh(seed):
    M = psd(40, seed=seed)
    ev = np.linalg.eigvalsh(M)
    top, low = eigsh_extreme(M, "LA", tol=1e-10), eigsh_extreme(M, "SA", tol=1e-10)
    assert top.converged and low.converged and top.iterations > 0
    assert top.value == pytest.approx(ev[-1], rel=1e-8) and low.value == pytest.approx(ev[0], rel=1e-8)
    assert top.residual < 1e-6 * ev[-1]
    r = lanczos(M, tol=1e-10, maxiter=40)[0]
    assert r["LA"].value == pytest.approx(ev[-1], rel=1e-9) and r["SA"].value == pytest.approx(ev[0], rel=1e-9)
    assert r["LA"].converged and r["SA"].converged and r["LA"].iterations <= 40


def test_power_iteration_max_and_shifted_min():
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    vals = np.concatenate([[1.0], np.linspace(2, 5, 28), [10.0]])  # well separated ends
    M = Q @ np.diag(vals) @ Q.T
    top = power_iteration(M, tol=1e-8, maxiter=2000)
    assert top.converged and top.value == pytest.approx(10.0, rel=1e-6)
    low = power_iteration_min(M, tol=1e-8, maxiter=5000)
    assert low.converged and low.value == pytest.approx(1.0, rel=1e-5)
    assert low.iterations > top.iterations  # includes the lambda_max run


def test_lanczos_is_batched_and_drops_converged_operators():
    easy = np.diag(np.concatenate([[1.0], np.linspace(50, 51, 28), [100.0]]))  # isolated ends: fast
    mats = [psd(30, seed=s, spread=5.0) for s in range(3)] + [easy]
    op = Batch(mats)
    res = lanczos(op, which="both", tol=1e-6, maxiter=30)
    for r, M in zip(res, mats):
        ev = np.linalg.eigvalsh(M)
        assert r["LA"].value == pytest.approx(ev[-1], rel=1e-6) and r["SA"].value == pytest.approx(ev[0], rel=1e-5)
        assert r["LA"].converged and r["SA"].converged
    assert res[3]["LA"].iterations < 15 and res[0]["SA"].iterations > res[3]["SA"].iterations
    assert op.calls[0] == 4 and min(op.calls) < 4  # converged operators leave the batch
    assert sum(op.calls) == sum(r["LA"].iterations for r in res)
    only_top = lanczos(Batch(mats), which="LA", tol=1e-6, maxiter=30)
    assert all(set(r) == {"LA"} for r in only_top)
    assert max(r["LA"].iterations for r in only_top) < 30  # the top converges before the Krylov space is full


def test_singular_operator_zero_minimum():
    M = psd(50, rank=20, seed=4)  # rank 20: 30 zero eigenvalues
    ev = np.linalg.eigvalsh(M)
    r = lanczos(M, which="SA", tol=1e-6, atol=1e-9 * ev[-1], maxiter=50)[0]["SA"]
    assert abs(r.value) < 1e-9 * ev[-1] and r.converged
    shifted = eigsh_extreme(M, "SA", tol=1e-10, shift=1.01 * ev[-1])
    assert abs(shifted.value) < 1e-6 * ev[-1]
    assert not shifted.converged  # accurate only relative to the shift, not to a zero eigenvalue


def test_nonconvergence_is_reported():
    M = psd(200, seed=5, spread=30.0)
    r = lanczos(M, tol=1e-12, maxiter=5)[0]
    assert r["SA"].iterations == 5 and not r["SA"].converged
    ev = np.linalg.eigvalsh(M)
    assert r["SA"].value >= ev[0] - 1e-9 and r["LA"].value <= ev[-1] + 1e-9  # Ritz values stay inside
    p = power_iteration(M, tol=1e-14, maxiter=3)
    assert not p.converged and p.iterations == 3


def test_dense_hessian_spectrum_of_a_small_model(make_model):
    model = make_model("lenet", (1, 6, 6))
    x = torch.randn(1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for loss in ("l2", "cosine"):
        Hd = dense_hessian(model, x, 5, loss, input_shape=(1, 6, 6), dtype=torch.float64).numpy()
        ev = np.linalg.eigvalsh(Hd)
        H = hvp_fn(model, x, 5, loss, input_shape=(1, 6, 6), dtype=torch.float64)
        top = eigsh_extreme(H, "LA", tol=1e-8)
        assert top.value == pytest.approx(ev[-1], rel=1e-6)
        r = lanczos(H, maxiter=36, tol=1e-8)[0]  # Krylov space = whole space: exact at both ends
        assert r["LA"].value == pytest.approx(ev[-1], rel=1e-8)
        assert r["SA"].value == pytest.approx(ev[0], rel=1e-5, abs=1e-12 * ev[-1])
        # the vmap-batched operator gives the same numbers
        B = batched_hvp_fn(model, torch.stack([x, x]), [5, 5], loss, input_shape=(1, 6, 6), dtype=torch.float64)
        rb = lanczos(B, maxiter=36, tol=1e-8)
        assert rb[0]["LA"].value == pytest.approx(ev[-1], rel=1e-8)
        assert rb[1]["SA"].value == pytest.approx(r["SA"].value, rel=1e-6, abs=1e-12 * ev[-1])


def test_bad_arguments():
    with pytest.raises(ConfigError):
        eigsh_extreme(np.eye(3), "LM")
    with pytest.raises(ConfigError):
        lanczos(np.eye(3), which="max")
    with pytest.raises(ConfigError, match="dim"):
        power_iteration(lambda v: v)
    with pytest.raises(ConfigError, match="square"):
        lanczos(np.ones((2, 3)))


def test_one_krylov_space_gives_a_rank_one_downdated_family():
    """Lanczos on A = 2 J^T J started at c = J^T u returns lambda_max of A and of (J^T J - c c^T)/n2 (the L2 and
    cosine Gauss-Newton forms) for the products of one run, and the family also handles a negative scale."""
    rng = np.random.default_rng(7)
    J = rng.standard_normal((90, 60)) * np.linspace(1, 6, 60)
    g = rng.standard_normal(90)
    n2 = g @ g
    c = J.T @ (g / np.sqrt(n2))
    G = J.T @ J
    ops = Batch([2 * G])
    fam = {"l2": (1.0, 0.0), "cosine": (1 / (2 * n2), 2 * c @ c), "neg": (-1.0, 0.0)}
    res = lanczos(ops, which="both", tol=1e-9, maxiter=60, start=torch.as_tensor(c)[None], variants=fam)[0]
    truth = {"l2": np.linalg.eigvalsh(2 * G), "cosine": np.linalg.eigvalsh((G - np.outer(c, c)) / n2),
             "neg": np.linalg.eigvalsh(-2 * G)}
    for name, ev in truth.items():
        assert res[name]["LA"].value == pytest.approx(ev[-1], rel=1e-8)
        assert res[name]["SA"].value == pytest.approx(ev[0], rel=1e-6, abs=1e-9 * abs(ev).max())
    # the top end alone converges long before the space is full, for both members, with one run's products
    top = lanczos(Batch([2 * G]), which="LA", tol=1e-6, maxiter=60, start=torch.as_tensor(c)[None],
                  variants={k: fam[k] for k in ("l2", "cosine")})[0]
    assert top["l2"]["LA"].iterations == top["cosine"]["LA"].iterations < 40
    for name in ("l2", "cosine"):
        assert top[name]["LA"].converged
        assert top[name]["LA"].value == pytest.approx(truth[name][-1], rel=1e-5)
    with pytest.raises(ConfigError, match="start"):
        lanczos(Batch([G]), start=torch.zeros(1, 60))
    with pytest.raises(ConfigError, match="variant"):
        lanczos(Batch([G]), variants={"bad": (1.0,)})


def test_gap_criterion_stops_earlier_and_stays_within_tolerance():
    mats = [psd(120, seed=s, spread=4.0) for s in range(4)]
    strict = lanczos(Batch(mats), which="LA", tol=1e-6, maxiter=120)
    gap = lanczos(Batch(mats), which="LA", tol=1e-6, maxiter=120, criterion="gap")
    for M, r, q in zip(mats, strict, gap):
        top = np.linalg.eigvalsh(M)[-1]
        assert r["LA"].converged and q["LA"].converged
        assert q["LA"].iterations < r["LA"].iterations
        assert abs(q["LA"].value - top) <= 1e-6 * top  # the error estimate held
        assert q["LA"].residual > 1e-6 * top  # ... although the residual alone would not have stopped yet
    with pytest.raises(ConfigError, match="criterion"):
        lanczos(Batch(mats), criterion="value")
