"""Per-sample proxies: values against dense eigendecompositions, fusion arithmetic, labels, ranking."""

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from gradaudit.data import load_dataset
from gradaudit.errors import ConfigError
from gradaudit.models import ModelSpec, build_model
from gradaudit.proxies import compute_proxies, dense_hessian, rank_samples
from gradaudit.threat import Client, DataSpec, ServerKnowledge

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
DATA = DataSpec("t", (0.5,), (0.25,))
F64 = torch.float64


@pytest.fixture(scope="module")
def setup():
    spec = ModelSpec("lenet", 10, (1, 6, 6))
    torch.manual_seed(0)
    model = build_model(spec)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 6, 6, generator=g)
    labels = torch.tensor([3, 3, 7, 1])
    return spec, model, images, labels


def _exact(model, images, labels, loss):
    out = []
    for x, y in zip(images, labels):
        H = dense_hessian(model, (x.double() - 0.5) / 0.25, y, loss, input_shape=(1, 6, 6), dtype=F64)
        ev = np.linalg.eigvalsh(H.numpy())
        out.append((ev[-1], ev[0]))
    return np.array(out)


def test_proxies_equal_dense_eigenvalues(setup):
    spec, model, images, labels = setup
    exact = {loss: _exact(model, images, labels, loss) for loss in ("l2", "cosine")}
    dense = compute_proxies(model, images, labels, data=DATA, method="dense", dtype=F64)
    lanc = compute_proxies(model, images, labels, data=DATA, method="lanczos", maxiter=36, tol=1e-9, dtype=F64,
                           batch_size=3)
    for table in (dense, lanc):
        assert [r["index"] for r in table.rows] == [0, 1, 2, 3]
        for loss in ("l2", "cosine"):
            np.testing.assert_allclose(table.column(f"{loss}_max"), exact[loss][:, 0], rtol=1e-7)
            np.testing.assert_allclose(table.column(f"{loss}_min"), exact[loss][:, 1], rtol=1e-4,
                                       atol=1e-10 * exact[loss][:, 0].max())
        assert all(table.rows[i]["l2_max_converged"] for i in range(4))
    assert table.meta["method"] == "lanczos" and table.meta["dim"] == 36


def test_lambda_max_of_both_losses_from_one_early_stopped_run():
    """D = 256 inputs: lambda_max of L2 and cosine converge (tol 1e-6) in far fewer than D products of the one
    shared run (started at c = J^T u), and equal the dense eigenvalues; vmap and the cached-graph loop agree."""
    torch.manual_seed(1)
    model = build_model(ModelSpec("lenet", 10, (1, 16, 16)))
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 4, 9])
    dense = compute_proxies(model, images, labels, data=DATA, method="dense", which=("max",), dtype=F64)
    for vectorize in (True, False):
        t = compute_proxies(model, images, labels, data=DATA, which=("max",), tol=1e-6, maxiter=100, dtype=F64,
                            vectorize=vectorize)
        for loss in ("l2", "cosine"):
            np.testing.assert_allclose(t.column(f"{loss}_max"), dense.column(f"{loss}_max"), rtol=1e-5)
            assert all(r[f"{loss}_max_converged"] for r in t.rows)
            assert max(r[f"{loss}_max_iterations"] for r in t.rows) < 60
        assert [r["l2_max_iterations"] for r in t.rows] == [r["cosine_max_iterations"] for r in t.rows]


def test_gradient_norm_is_the_clients_update_norm(setup):
    spec, model, images, labels = setup
    norms = []
    for i in range(4):
        obs = Client(model, spec, DATA, knowledge=ServerKnowledge(labels=True)).share(images[i:i + 1], labels[i:i + 1])
        norms.append(float(torch.sqrt(sum((u.double() ** 2).sum() for u in obs.update.values()))))
    table = compute_proxies(obs, images, labels, which=("max",), maxiter=10)  # Observation: its DataSpec
    np.testing.assert_allclose(table.column("grad_norm"), norms, rtol=1e-5)
    assert "l2_min" not in table.columns and "fused_rank_max" in table.columns


def test_fusion_is_the_geometric_mean_of_values_and_of_ranks(setup):
    spec, model, images, labels = setup
    t = compute_proxies(model, images, labels, data=DATA, method="dense", dtype=F64)
    for w in ("max", "min"):
        a, b = t.column(f"l2_{w}"), t.column(f"cosine_{w}")
        np.testing.assert_allclose(t.column(f"fused_value_{w}"), np.sqrt(a * b))
        np.testing.assert_allclose(t.column(f"fused_rank_{w}"), np.sqrt(rankdata(a) * rankdata(b)))
    assert set(t.proxies) == {"grad_norm", "l2_max", "l2_min", "cosine_max", "cosine_min", "fused_value_max",
                              "fused_value_min", "fused_rank_max", "fused_rank_min"}
    ranked = t.ranked("cosine_max")
    assert [r["cosine_max"] for r in ranked] == sorted(t.column("cosine_max"), reverse=True)


def test_vectorised_and_looped_proxies_agree(setup):
    spec, model, images, labels = setup
    kw = dict(data=DATA, maxiter=12, tol=1e-12, dtype=F64)
    a = compute_proxies(model, images, labels, vectorize=True, **kw)
    b = compute_proxies(model, images, labels, vectorize=False, **kw)
    c = compute_proxies(model, images, labels, vectorize=True, batch_size=3, **kw)  # batches of 3 and 1
    assert not a.rows[0]["l2_min_converged"]  # 12 steps: unconverged upper bounds, still batch-independent
    for col in a.proxies:
        np.testing.assert_allclose(a.column(col), b.column(col), rtol=1e-9)
        np.testing.assert_allclose(a.column(col), c.column(col), rtol=1e-9)


def test_singular_l2_hessian_when_fewer_parameters_than_pixels(tiny_conv):
    """P = 60 < D = 64: 2 J^T J has a null space, so lambda_min(L2) = 0 (and Lanczos finds it)."""
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = compute_proxies(tiny_conv, x, [2, 5], data=((0.5,), (0.25,)), maxiter=64, tol=1e-8, dtype=F64)
    assert np.all(np.abs(t.column("l2_min")) < 1e-10 * t.column("l2_max"))
    assert np.all(np.abs(t.column("cosine_min")) < 1e-10 * t.column("cosine_max"))
    assert all(r["l2_min_converged"] for r in t.rows)  # the Krylov space is exhausted (rank <= 60)


def test_unknown_labels_are_recovered_from_single_sample_observations(setup):
    spec, model, images, labels = setup
    client = Client(model, spec, DATA, knowledge=ServerKnowledge(labels=False))
    observations = [client.share(images[i:i + 1], labels[i:i + 1]) for i in range(4)]
    assert all(o.labels is None for o in observations)
    t = compute_proxies(observations[0], images, observations=observations, which=("max",), maxiter=20,
                        dtype=F64)
    assert [r["label"] for r in t.rows] == labels.tolist()
    assert {r["label_source"] for r in t.rows} == {"idlg"}
    known = compute_proxies(model, images, labels, data=DATA, which=("max",), maxiter=20, dtype=F64)
    np.testing.assert_allclose(t.column("l2_max"), known.column("l2_max"), rtol=1e-6)


def test_power_and_arpack_methods_run_and_agree_on_lambda_max(setup):
    spec, model, images, labels = setup
    exact = _exact(model, images[:2], labels[:2], "l2")[:, 0]
    for method in ("power", "arpack"):
        t = compute_proxies(model, images[:2], labels[:2], data=DATA, method=method, tol=1e-8, maxiter=300,
                            losses=("l2",), dtype=F64)
        np.testing.assert_allclose(t.column("l2_max"), exact, rtol=1e-5)
        assert "fused_value_max" not in t.columns  # fusion needs both losses


def test_rank_samples_sorts_the_dataset():
    ds = load_dataset("embedded", image_size=8)
    t = rank_samples(ds, "lenet", [0, 9, 20, 33], seed=0, proxy="l2_max", which=("max",), maxiter=15)
    vals = [r["l2_max"] for r in t.rows]
    assert vals == sorted(vals, reverse=True)
    assert sorted(t.meta["order"]) == [0, 9, 20, 33] and t.meta["sorted_by"] == "l2_max"
    assert [r["label"] for r in t.rows] == [int(ds.labels[i]) for i in t.meta["order"]]
    with pytest.raises(ConfigError, match="proxy"):
        rank_samples(ds, "lenet", [0, 1], proxy="l2_mx", which=("max",), maxiter=3)


def test_errors(setup, monkeypatch):
    spec, model, images, labels = setup
    import gradaudit.proxies.lavp as lavp

    monkeypatch.setattr(lavp, "DENSE_LIMIT_BYTES", 1000)
    with pytest.raises(ConfigError, match="lanczos"):
        compute_proxies(model, images, labels, data=DATA, method="dense")
    with pytest.raises(ConfigError, match="labels"):
        compute_proxies(model, images, data=DATA)
    with pytest.raises(ConfigError, match="data="):
        compute_proxies(model, images, labels)
    with pytest.raises(ConfigError, match="proxy method"):
        compute_proxies(model, images, labels, data=DATA, method="svd")
    with pytest.raises(ConfigError, match="which"):
        compute_proxies(model, images, labels, data=DATA, which=("mid",))
    with pytest.raises(ConfigError, match="3 labels"):
        compute_proxies(model, images, labels[:3], data=DATA)
