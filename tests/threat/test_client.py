"""The federated client: FedSGD / FedAvg updates, recorded BN statistics, knowledge flags, defenses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradaudit.defenses import GaussianNoise, parse_defense
from gradaudit.errors import ConfigError
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge, batch_statistics, batchnorm_layers

SHAPE = (3, 16, 16)
DATA = DataSpec("toy", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
LENET = ModelSpec("lenet", 10, SHAPE)
CONVNET = ModelSpec("convnet", 10, SHAPE, {"width": 4})


def _model(spec: ModelSpec, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec)


def _batch(b: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, *SHAPE, generator=g), torch.randint(0, 10, (b,), generator=g)


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(DATA.mean).view(1, 3, 1, 1)
    std = torch.tensor(DATA.std).view(1, 3, 1, 1)
    return (images - mean) / std


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------- FedSGD
def test_fedsgd_update_is_mean_of_per_sample_gradients():
    """Without batch norm, the batch-mean gradient equals the average of B single-sample gradients."""
    model = _model(LENET)
    images, labels = _batch(4)
    obs = Client(model, LENET, DATA).share(images, labels)

    x = _normalize(images)
    per_sample = []
    for j in range(4):
        loss = F.cross_entropy(model(x[j:j + 1]), labels[j:j + 1])
        per_sample.append(torch.autograd.grad(loss, list(model.parameters())))
    names = [k for k, _ in model.named_parameters()]
    assert list(obs.update) == names
    for i, name in enumerate(names):
        expected = torch.stack([g[i] for g in per_sample]).mean(0)
        torch.testing.assert_close(obs.update[name], expected, rtol=0, atol=1e-6)
    assert obs.update_kind == "gradient" and obs.local_steps == 1 and obs.local_lr is None
    assert obs.batch_size == 4
    # theta_0 is what the server sent
    for name, p in model.named_parameters():
        assert torch.equal(obs.parameters[name], p.detach())


def test_fedsgd_update_with_batchnorm_uses_batch_statistics_and_sum_over_b():
    model = _model(CONVNET)
    images, labels = _batch(5)
    obs = Client(model, CONVNET, DATA).share(images, labels)

    model.train()
    logits = model(_normalize(images))
    loss = F.cross_entropy(logits, labels, reduction="sum") / 5
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(obs.update[name], g, rtol=0, atol=1e-6)


def test_client_uses_the_dataspec_normalisation():
    model = _model(LENET)
    images, labels = _batch(2)
    a = Client(model, LENET, DATA).share(images, labels)
    other = DataSpec("toy", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    b = Client(model, LENET, other).share(images, labels)
    assert not torch.allclose(a.update["body.0.weight"], b.update["body.0.weight"])
    assert a.data == DATA and b.data == other


def test_client_restores_eval_mode():
    model = _model(CONVNET)
    model.eval()
    Client(model, CONVNET, DATA).share(*_batch(2))
    assert not model.training
    model.train()
    Client(model, CONVNET, DATA).share(*_batch(2))
    assert model.training


# --------------------------------------------------------------------------------------- BN statistics
def _first_bn_input_stats(model: nn.Module, images: torch.Tensor):
    seen = []
    first_bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    handle = first_bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    model.train()
    with torch.no_grad():
        model(_normalize(images))
    handle.remove()
    x = seen[0]
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)


@pytest.mark.parametrize("spec", [CONVNET, ModelSpec("resnet18", 10, SHAPE, {"width": 4})], ids=["convnet", "resnet"])
def test_bn_statistics_equal_batch_mean_and_biased_var_at_first_bn(spec):
    model = _model(spec)
    images, labels = _batch(3)
    obs = Client(model, spec, DATA, knowledge=ServerKnowledge(labels=True, bn_statistics=True)).share(images, labels)
    n_bn = len([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert obs.bn_statistics is not None and len(obs.bn_statistics) == n_bn
    mean, var = _first_bn_input_stats(_model(spec), images)
    torch.testing.assert_close(obs.bn_statistics[0][0], mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(obs.bn_statistics[0][1], var, rtol=1e-5, atol=1e-6)
    # biased, not unbiased, variance
    assert not torch.allclose(obs.bn_statistics[0][1], var * 3 * 16 * 16 / (3 * 16 * 16 - 1), rtol=0, atol=0)
    for (m, v), bn in zip(obs.bn_statistics, batchnorm_layers(model)):
        assert m.shape == v.shape == (bn.num_features,)
        assert (v >= 0).all()


def test_batch_statistics_helper():
    x = torch.randn(4, 3, 5, 5)
    mean, var = batch_statistics(x)
    torch.testing.assert_close(mean, x.permute(1, 0, 2, 3).reshape(3, -1).mean(1))
    torch.testing.assert_close(var, x.permute(1, 0, 2, 3).reshape(3, -1).var(1, unbiased=False))


# ------------------------------------------------------------------------------------------ knowledge
@pytest.mark.parametrize("labels_known", [True, False])
@pytest.mark.parametrize("bn_known", [True, False])
def test_knowledge_flags_control_what_is_observed(labels_known, bn_known):
    model = _model(CONVNET)
    images, labels = _batch(3)
    obs = Client(model, CONVNET, DATA, knowledge=ServerKnowledge(labels=labels_known, bn_statistics=bn_known)
                 ).share(images, labels)
    if labels_known:
        assert torch.equal(obs.labels, labels)
    else:
        assert obs.labels is None
    if bn_known:
        assert obs.bn_statistics is not None and len(obs.bn_statistics) == 4
    else:
        assert obs.bn_statistics is None
    assert obs.metadata()["labels_known"] is labels_known
    assert obs.metadata()["bn_statistics_known"] is bn_known


def test_default_knowledge_is_labels_without_bn_statistics():
    model = _model(CONVNET)
    obs = Client(model, CONVNET, DATA).share(*_batch(2))
    assert obs.labels is not None and obs.bn_statistics is None


# --------------------------------------------------------------------------------------------- FedAvg
@pytest.mark.parametrize("spec", [LENET, CONVNET], ids=["lenet", "convnet"])
def test_fedavg_one_step_is_lr_times_gradient(spec):
    images, labels = _batch(4)
    grad = Client(_model(spec), spec, DATA).share(images, labels).update
    obs = Client(_model(spec), spec, DATA, protocol="fedavg", local_steps=1, local_lr=0.05).share(images, labels)
    assert obs.update_kind == "local_update" and obs.local_steps == 1 and obs.local_lr == 0.05
    for name, g in grad.items():
        torch.testing.assert_close(obs.update[name], 0.05 * g, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(obs.gradient_estimate[name], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", [LENET, CONVNET], ids=["lenet", "convnet"])
def test_fedavg_three_steps_match_explicit_sgd(spec):
    images, labels = _batch(4)
    lr = 0.1
    model = _model(spec)
    before = _state(model)
    obs = Client(model, spec, DATA, protocol="fedavg", local_steps=3, local_lr=lr).share(images, labels)

    ref = _model(spec)
    ref.train()
    theta0 = {k: p.detach().clone() for k, p in ref.named_parameters()}
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    x = _normalize(images)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(ref(x), labels).backward()
        opt.step()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(obs.update[name], theta0[name] - p.detach(), rtol=1e-5, atol=1e-6)
    assert obs.local_steps == 3
    # the update is not K * lr * g(theta_0): the later steps really moved
    g0 = Client(_model(spec), spec, DATA).share(images, labels).update
    assert max((obs.update[k] - 3 * lr * g0[k]).abs().max().item() for k in g0) > 1e-4

    # the client trained a copy: the server's parameters are untouched, and theta_0 is what was sent
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name])
        assert torch.equal(obs.parameters[name], before[name])


def test_fedavg_does_not_modify_the_servers_model_state():
    """_local_training's docstring: 'the server's model is not modified' (buffers included)."""
    model = _model(CONVNET)
    before = _state(model)
    Client(model, CONVNET, DATA, protocol="fedavg", local_steps=2, local_lr=0.1).share(*_batch(3))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == []


def test_observation_buffers_are_the_state_before_training():
    model = _model(CONVNET)
    before = {k: v.detach().clone() for k, v in model.named_buffers()}
    obs = Client(model, CONVNET, DATA, protocol="fedavg", local_steps=2, local_lr=0.1).share(*_batch(3))
    assert set(obs.buffers) == set(before)
    for k, v in before.items():
        assert torch.equal(obs.buffers[k], v)


@pytest.mark.parametrize("steps", [1, 2])
def test_fedavg_bn_statistics_are_those_at_theta0(steps):
    images, labels = _batch(3)
    know = ServerKnowledge(labels=True, bn_statistics=True)
    sgd = Client(_model(CONVNET), CONVNET, DATA, knowledge=know).share(images, labels)
    avg = Client(_model(CONVNET), CONVNET, DATA, protocol="fedavg", local_steps=steps, local_lr=0.5,
                 knowledge=know).share(images, labels)
    assert avg.bn_statistics is not None and len(avg.bn_statistics) == len(sgd.bn_statistics) == 4
    for (m1, v1), (m2, v2) in zip(sgd.bn_statistics, avg.bn_statistics):
        torch.testing.assert_close(m2, m1, rtol=0, atol=1e-6)
        torch.testing.assert_close(v2, v1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(protocol="fedprox"), dict(protocol="fedavg", local_lr=None),
                                    dict(protocol="fedavg", local_lr=0.0), dict(protocol="fedavg", local_lr=0.1,
                                                                                local_steps=0)])
def test_bad_protocol_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        Client(_model(LENET), LENET, DATA, **kwargs)


# -------------------------------------------------------------------------------------------- defenses
def test_zero_noise_leaves_update_unchanged():
    images, labels = _batch(3)
    clean = Client(_model(LENET), LENET, DATA).share(images, labels)
    noisy = Client(_model(LENET), LENET, DATA, transforms=[GaussianNoise(0.0)], seed=3).share(images, labels)
    for k in clean.update:
        assert torch.equal(noisy.update[k], clean.update[k])
    assert noisy.defenses == ["noise:0"]
    assert clean.defenses == []


def test_gaussian_noise_has_requested_std_and_is_reproducible():
    images, labels = _batch(3)
    clean = Client(_model(LENET), LENET, DATA).share(images, labels)

    def noisy(seed):
        return Client(_model(LENET), LENET, DATA, transforms=[parse_defense("noise:0.1")], seed=seed
                      ).share(images, labels)

    a, b, c = noisy(7), noisy(7), noisy(8)
    diff = torch.cat([(a.update[k] - clean.update[k]).flatten() for k in clean.update])
    assert diff.numel() > 5000
    assert diff.std().item() == pytest.approx(0.1, rel=0.05)
    assert abs(diff.mean().item()) < 0.01
    for k in clean.update:
        assert torch.equal(a.update[k], b.update[k])
    assert any(not torch.equal(a.update[k], c.update[k]) for k in clean.update)
    assert a.defenses == ["noise:0.1"]
    # theta_0 is not noised
    for k in clean.parameters:
        assert torch.equal(a.parameters[k], clean.parameters[k])


def test_defenses_compose_in_order():
    images, labels = _batch(2)
    clean = Client(_model(LENET), LENET, DATA).share(images, labels)
    two = Client(_model(LENET), LENET, DATA, transforms=[GaussianNoise(0.03), GaussianNoise(0.04)], seed=1
                 ).share(images, labels)
    diff = torch.cat([(two.update[k] - clean.update[k]).flatten() for k in clean.update])
    assert diff.std().item() == pytest.approx(0.05, rel=0.06)  # sqrt(0.03^2 + 0.04^2)
    assert two.defenses == ["noise:0.03", "noise:0.04"]


def test_negative_noise_and_bad_defense_specs_are_config_errors():
    with pytest.raises(ConfigError):
        GaussianNoise(-0.1)
    with pytest.raises(ConfigError, match="unknown defense 'nosie'.*did you mean 'noise'"):
        parse_defense("nosie:0.1")
    with pytest.raises(ConfigError, match="needs a strength"):
        parse_defense("noise")
    with pytest.raises(ConfigError, match="not a number"):
        parse_defense("noise:abc")


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 3, 32, 32), (3, 16, 16), (2, 3, 16, 8)])
def test_wrong_image_shape_is_config_error(shape):
    client = Client(_model(LENET), LENET, DATA)
    with pytest.raises(ConfigError, match=r"images must have shape \[B, 3, 16, 16\]"):
        client.share(torch.rand(*shape), torch.zeros(shape[0], dtype=torch.long))


def test_wrong_labels_shape_is_config_error():
    client = Client(_model(LENET), LENET, DATA)
    with pytest.raises(ConfigError, match="labels must have shape"):
        client.share(torch.rand(2, *SHAPE), torch.zeros(3, dtype=torch.long))
