"""DP-SGD: per-sample clipping + Gaussian noise, integrated in the Client (FedSGD and FedAvg)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradaudit.defenses import DPSGD, GaussianNoise, accountant, per_sample_gradients
from gradaudit.errors import ConfigError
from gradaudit.threat import Client, Observation

from _defense_helpers import CONVNET, DATA, LENET, MLP, batch, model, normalize


def _loop_per_sample(net, x, labels):
    """Per-sample gradients by an explicit loop over single-sample batches: list over j of {name: grad}."""
    names = [k for k, _ in net.named_parameters()]
    out = []
    for j in range(x.shape[0]):
        loss = F.cross_entropy(net(x[j:j + 1]), labels[j:j + 1])
        out.append(dict(zip(names, torch.autograd.grad(loss, list(net.parameters())))))
    return out


def _clipped_mean(per_sample, clip):
    norms = [float(torch.sqrt(sum((g.double() ** 2).sum() for g in gs.values()))) for gs in per_sample]
    factors = [min(1.0, clip / n) for n in norms]
    names = list(per_sample[0])
    mean = {k: sum(f * gs[k] for f, gs in zip(factors, per_sample)) / len(per_sample) for k in names}
    return mean, norms


@pytest.mark.parametrize("spec", [LENET, MLP], ids=["lenet", "mlp"])
def test_noiseless_dpsgd_equals_mean_of_per_sample_clipped_gradients(spec):
    net = model(spec)
    images, labels = batch(6)
    per_sample = _loop_per_sample(net, normalize(images), labels)
    norms = sorted(float(torch.sqrt(sum((g ** 2).sum() for g in gs.values()))) for gs in per_sample)
    clip = (norms[2] + norms[3]) / 2  # half the samples are clipped, half are not
    expected, norms = _clipped_mean(per_sample, clip)
    assert any(n > clip for n in norms) and any(n < clip for n in norms)

    obs = Client(net, spec, DATA, transforms=[DPSGD(clip, 0.0)]).share(images, labels)
    assert list(obs.update) == list(expected)
    for k in expected:
        torch.testing.assert_close(obs.update[k], expected[k], rtol=0, atol=1e-6)
    # and the vmap per-sample gradients themselves match the loop
    net.train()
    vm = per_sample_gradients(net, normalize(images), labels)
    for j, gs in enumerate(per_sample):
        for k in gs:
            torch.testing.assert_close(vm[k][j], gs[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", [LENET, MLP], ids=["lenet", "mlp"])
def test_huge_clip_and_zero_noise_equals_plain_fedsgd(spec):
    net = model(spec)
    images, labels = batch(5)
    plain = Client(net, spec, DATA).share(images, labels)
    dp = Client(net, spec, DATA, transforms=[DPSGD(1e6, 0.0)]).share(images, labels)
    for k in plain.update:
        torch.testing.assert_close(dp.update[k], plain.update[k], rtol=0, atol=1e-6)


def test_noise_std_is_sigma_c_over_b():
    net = model(LENET)
    images, labels = batch(4)
    clip, sigma, b = 0.5, 2.0, 4
    clean = Client(net, LENET, DATA, transforms=[DPSGD(clip, 0.0)]).share(images, labels).update
    noisy = Client(net, LENET, DATA, transforms=[DPSGD(clip, sigma)], seed=3).share(images, labels).update
    diff = torch.cat([(noisy[k] - clean[k]).reshape(-1) for k in clean])
    assert diff.numel() > 5000
    assert float(diff.std()) == pytest.approx(sigma * clip / b, rel=0.05)
    assert abs(float(diff.mean())) < 5 * sigma * clip / b / diff.numel() ** 0.5
    again = Client(net, LENET, DATA, transforms=[DPSGD(clip, sigma)], seed=3).share(images, labels).update
    assert all(torch.equal(again[k], noisy[k]) for k in noisy)  # seeded client: reproducible


def test_privatize_directly_clips_sums_and_averages():
    per_sample = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]]), "b": torch.zeros(2, 1)}  # norms 5 and 0.5
    out = DPSGD(1.0, 0.0).privatize(per_sample)
    torch.testing.assert_close(out["w"], torch.tensor([(0.6 + 0.3) / 2, (0.8 + 0.4) / 2]))
    assert torch.equal(out["b"], torch.zeros(1))


def test_fedavg_dpsgd_takes_every_local_step_with_the_privatized_gradient():
    net = model(MLP)
    images, labels = batch(4)
    clip, lr, k_steps = 0.05, 0.1, 3
    obs = Client(net, MLP, DATA, protocol="fedavg", local_steps=k_steps, local_lr=lr,
                 transforms=[DPSGD(clip, 0.0)]).share(images, labels)
    ref = model(MLP)  # same seed, same weights
    x = normalize(images)
    total = {k: torch.zeros_like(p) for k, p in ref.named_parameters()}
    for _ in range(k_steps):
        step, norms = _clipped_mean(_loop_per_sample(ref, x, labels), clip)
        assert any(n > clip for n in norms)
        with torch.no_grad():
            for k, p in ref.named_parameters():
                p.sub_(lr * step[k])
                total[k] += lr * step[k]
    assert obs.update_kind == "local_update"
    for k in total:
        torch.testing.assert_close(obs.update[k], total[k], rtol=0, atol=1e-6)
    assert obs.extras["dp_epsilon"] == float("inf")  # no noise: no guarantee


def test_observation_records_description_and_one_step_epsilon(tmp_path):
    net = model(LENET)
    images, labels = batch(3)
    dp = DPSGD(1.0, 1.1)
    obs = Client(net, LENET, DATA, transforms=[dp, GaussianNoise(0.01)], seed=0).share(images, labels)
    assert obs.defenses == ["dpsgd:C=1,sigma=1.1", "noise:0.01"]
    expected = accountant.epsilon(1.1, 1.0, 1, 1e-5)
    assert obs.extras["dp_epsilon"] == pytest.approx(expected, rel=1e-12)
    assert obs.extras["dp_delta"] == 1e-5
    assert dp.epsilon(steps=1, sample_rate=1.0) == pytest.approx(expected, rel=1e-12)
    # a full-batch step is the Gaussian mechanism: its epsilon for K steps equals that of sigma / sqrt(K)
    fedavg = Client(net, LENET, DATA, protocol="fedavg", local_steps=4, local_lr=0.01,
                    transforms=[dp]).share(images, labels)
    assert fedavg.extras["dp_epsilon"] == pytest.approx(accountant.epsilon(1.1 / 2, 1.0, 1, 1e-5), rel=1e-9)
    obs.save(tmp_path / "o")
    assert Observation.load(tmp_path / "o").extras["dp_epsilon"] == pytest.approx(expected)


def test_batchnorm_model_is_refused():
    net = model(CONVNET)
    with pytest.raises(ConfigError, match="batch norm"):
        Client(net, CONVNET, DATA, transforms=[DPSGD(1.0, 1.0)])
    images, labels = batch(2)
    with pytest.raises(ConfigError, match="batch norm"):
        per_sample_gradients(net, normalize(images), labels)


def test_dpsgd_must_come_first_once_and_not_on_a_mean_update():
    net = model(LENET)
    with pytest.raises(ConfigError, match="first"):
        Client(net, LENET, DATA, transforms=[GaussianNoise(0.1), DPSGD(1.0, 1.0)])
    with pytest.raises(ConfigError, match="at most one"):
        Client(net, LENET, DATA, transforms=[DPSGD(1.0, 1.0), DPSGD(1.0, 2.0)])
    with pytest.raises(ConfigError, match="per-sample"):
        DPSGD(1.0, 1.0)({"w": torch.zeros(2)})


def test_validation_and_describe():
    for args in ((0.0, 1.0), (-1.0, 1.0), (float("inf"), 1.0), (1.0, -0.1), (1.0, float("nan")), (1.0, 1.0, 0.0),
                 (1.0, 1.0, 1.0)):
        with pytest.raises(ConfigError):
            DPSGD(*args)
    assert DPSGD(1.0, 1.1).describe() == "dpsgd:C=1,sigma=1.1"
    assert DPSGD(0.5, 2.0, 1e-6).describe() == "dpsgd:C=0.5,sigma=2,delta=1e-06"
    assert DPSGD(1.0, 0.0).epsilon(1, 1.0) == float("inf")
