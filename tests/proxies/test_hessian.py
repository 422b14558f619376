"""Hessian-vector products of the matching loss at the ground truth, checked against autograd Hessians of the
actual loss (float64), the Gauss-Newton identities, the client's own gradient, and batch-norm handling."""

import pytest
import torch

from gradaudit.attacks.matching.victim import FunctionalVictim
from gradaudit.errors import ConfigError
from gradaudit.models import ModelSpec
from gradaudit.proxies.hessian import (GradientMap, SampleLinearization, batched_hvp_fn, dense_hessian, hvp_fn,
                                       jacobian, matching_loss)
from gradaudit.threat import Client, DataSpec, ServerKnowledge

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
F64 = dict(dtype=torch.float64)
CASES = [("mlp", (1, 6, 6), {"width": 32}), ("lenet", (1, 8, 8), {})]


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request, make_model):
    name, shape, kw = request.param
    model = make_model(name, shape, **kw)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return model, shape, x, 3


@pytest.mark.parametrize("loss", ["l2", "cosine"])
def test_hvp_matches_autograd_hessian_of_the_loss(case, loss):
    model, shape, x, y = case
    L = matching_loss(model, x, y, loss, input_shape=shape, **F64)
    H_true = torch.autograd.functional.hessian(L, x.reshape(-1))
    assert H_true.abs().max() > 0  # the model really depends on x (no dead-ReLU degenerate case)
    H = hvp_fn(model, x, y, loss, input_shape=shape, **F64)
    V = torch.randn(3, x.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for v in V:
        assert _rel(H(v), H_true @ v) < 1e-4
    assert _rel(dense_hessian(model, x, y, loss, input_shape=shape, **F64), H_true) < 1e-4
    assert H.matvecs == 3


def test_gauss_newton_identities(case):
    model, shape, x, y = case
    J = jacobian(model, x, y, input_shape=shape, **F64)
    g = GradientMap.from_source(model, input_shape=shape, **F64)(x, torch.tensor(y))
    assert J.shape == (g.numel(), x.numel())
    torch.testing.assert_close(dense_hessian(model, x, y, "l2", input_shape=shape, **F64), 2 * J.T @ J)
    u = g / g.norm()
    P = torch.eye(g.numel(), dtype=torch.float64) - torch.outer(u, u)
    torch.testing.assert_close(dense_hessian(model, x, y, "cosine", input_shape=shape, **F64),
                               J.T @ P @ J / g.norm() ** 2)
    # chunked forward-mode columns equal jacfwd
    torch.testing.assert_close(jacobian(model, x, y, input_shape=shape, chunk=7, **F64), J)


def test_cached_mixed_partials_equal_the_jacobian(case):
    """J v = d/dtheta <dL/dx, v> and J^T w = d/dx <dL/dtheta, w> through one cached graph equal the dense J."""
    model, shape, x, y = case
    J = jacobian(model, x, y, input_shape=shape, **F64)
    gmap = GradientMap.from_source(model, input_shape=shape, **F64)
    lin = SampleLinearization(gmap, x, y)
    torch.testing.assert_close(lin.g_star, gmap(x, torch.tensor(y)))
    g = torch.Generator().manual_seed(4)
    for _ in range(2):  # the graph is reused: a second product is as exact as the first
        v = torch.randn(x.numel(), generator=g, dtype=torch.float64)
        w = torch.randn(J.shape[0], generator=g, dtype=torch.float64)
        assert _rel(lin.jvp(v), J @ v) < 1e-10
        assert _rel(lin.vjp(w), J.T @ w) < 1e-10


@pytest.mark.parametrize("loss", ["l2", "cosine"])
def test_batched_products_equal_single_sample_products(case, loss):
    model, shape, x, y = case
    g = torch.Generator().manual_seed(3)
    xs = torch.stack([x, x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64), -x])
    ys = [y, 1, 7]
    V = torch.randn(3, x.numel(), generator=g, dtype=torch.float64)
    B = batched_hvp_fn(model, xs, ys, loss, input_shape=shape, **F64)
    out = B(V)
    single = torch.stack([hvp_fn(model, xs[i], ys[i], loss, input_shape=shape, **F64)(V[i]) for i in range(3)])
    torch.testing.assert_close(out, single)
    loop = batched_hvp_fn(model, xs, ys, loss, input_shape=shape, vectorize=False, **F64)(V)
    torch.testing.assert_close(loop, single)
    torch.testing.assert_close(B(V[[2, 0]], rows=[2, 0]), single[[2, 0]])  # a subset of the samples
    assert B.matvecs == 5
    W = torch.randn(3, B.g_star.shape[1], generator=g, dtype=torch.float64)
    pulled = torch.stack([jacobian(model, xs[i], ys[i], input_shape=shape, **F64).T @ W[i] for i in range(3)])
    torch.testing.assert_close(B.pullback(W), pulled)
    torch.testing.assert_close(batched_hvp_fn(model, xs, ys, loss, input_shape=shape, vectorize=False,
                                              **F64).pullback(W), pulled)


def test_mixed_losses_in_one_batch(case):
    model, shape, x, y = case
    v = torch.randn(x.numel(), dtype=torch.float64)
    B = batched_hvp_fn(model, torch.stack([x, x]), [y, y], ["l2", "cosine"], input_shape=shape, **F64)
    out = B(torch.stack([v, v]))
    torch.testing.assert_close(out[0], hvp_fn(model, x, y, "l2", input_shape=shape, **F64)(v))
    torch.testing.assert_close(out[1], hvp_fn(model, x, y, "cosine", input_shape=shape, **F64)(v))


def test_gradient_map_equals_the_clients_shared_update(make_model):
    """The map's g(x*) from an Observation is exactly the FedSGD update the client sent (BN in train mode)."""
    spec = ModelSpec("convnet", 10, (3, 8, 8), {"width": 4})
    torch.manual_seed(0)
    from gradaudit.models import build_model

    model = build_model(spec)
    data = DataSpec("t", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    img = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    obs = Client(model, spec, data, knowledge=ServerKnowledge(labels=True)).share(img, torch.tensor([4]))
    gmap = GradientMap.from_source(obs)
    x = ((img - 0.5) / 0.25)[0]
    g = gmap(x, torch.tensor(4))
    expected = torch.cat([obs.update[k].reshape(-1) for k in gmap.names])
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-6)
    # a FunctionalVictim built from the same observation gives the same map
    victim_map = GradientMap.from_source(FunctionalVictim(obs), input_shape=(3, 8, 8))
    torch.testing.assert_close(victim_map(x, torch.tensor(4)), g)


def test_batchnorm_train_mode_keeps_each_samples_statistics(make_model):
    """With BN on single-sample statistics, vmap over samples must not mix the samples' statistics."""
    model = make_model("convnet", (3, 8, 8), width=4)
    shape = (3, 8, 8)
    g = torch.Generator().manual_seed(5)
    xs = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    xs[1] = 3 * xs[1] + 1  # different statistics
    v = torch.randn(2, 192, generator=g, dtype=torch.float64)
    B = batched_hvp_fn(model, xs, [1, 2], "l2", input_shape=shape, **F64)
    loop = batched_hvp_fn(model, xs, [1, 2], "l2", input_shape=shape, vectorize=False, **F64)  # cached graphs
    for i in range(2):
        L = matching_loss(model, xs[i], [1, 2][i], "l2", input_shape=shape, **F64)
        _, hv = torch.autograd.functional.hvp(L, xs[i].reshape(-1), v[i])
        assert _rel(B(v)[i], hv) < 1e-4
        assert _rel(loop(v)[i], hv) < 1e-4


def test_batchnorm_eval_mode_uses_running_statistics(make_model):
    model = make_model("convnet", (3, 8, 8), width=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    ev = GradientMap.from_source(model, bn_mode="eval", input_shape=(3, 8, 8), **F64)
    tr = GradientMap.from_source(model, bn_mode="train", input_shape=(3, 8, 8), **F64)
    y = torch.tensor(2)
    assert _rel(ev(x, y), tr(x, y)) > 1e-3
    model.eval()  # eval-mode reference: the module's own forward with running statistics
    xx = x.float()[None]
    params = [p for p in model.parameters()]
    ref = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xx), y[None]), params)
    torch.testing.assert_close(ev(x, y).float(), torch.cat([r.reshape(-1) for r in ref]), rtol=1e-4, atol=1e-6)
    assert all(m.training is False for m in model.modules())  # the source model was not switched back or changed
    H = hvp_fn(model, x, y, "cosine", bn_mode="eval", input_shape=(3, 8, 8), **F64)
    L = matching_loss(model, x, y, "cosine", bn_mode="eval", input_shape=(3, 8, 8), **F64)
    v = torch.randn(192, dtype=torch.float64)
    assert _rel(H(v), torch.autograd.functional.hvp(L, x.reshape(-1), v)[1]) < 1e-4


def test_degenerate_single_sample_batchnorm_is_refused(make_model):
    model = make_model("resnet18", (3, 8, 8), width=4)  # the last stage is 1x1: one value per channel
    with pytest.raises(ConfigError, match="bn_mode='eval'"):
        GradientMap.from_source(model, input_shape=(3, 8, 8))
    GradientMap.from_source(model, bn_mode="eval", input_shape=(3, 8, 8))  # fine with running statistics


def test_bad_inputs_are_refused(make_model):
    model = make_model("lenet", (1, 8, 8))
    with pytest.raises(ConfigError, match="input_shape"):
        GradientMap.from_source(model)
    with pytest.raises(ConfigError, match="matching loss"):
        hvp_fn(model, torch.zeros(1, 8, 8), 0, "cos", input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="64 values"):
        hvp_fn(model, torch.zeros(1, 6, 6), 0, input_shape=(1, 8, 8))
