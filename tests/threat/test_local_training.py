"""Minibatch FedAvg: the client's E epochs of minibatch SGD (momentum, weight decay) equal torch.optim.SGD's, the
observation carries the local training, and bad combinations are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradaudit.config import ThreatConfig
from gradaudit.errors import ConfigError, ObservationError
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, Observation, aggregate
from gradaudit.threat.local_training import LocalTraining

SHAPE = (3, 16, 16)
DATA = DataSpec("toy", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
CONVNET = ModelSpec("convnet", 10, SHAPE, {"width": 4})
LENET = ModelSpec("lenet", 10, SHAPE)


def _model(spec, seed=0):
    torch.manual_seed(seed)
    return build_model(spec)


def _batch(b=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, *SHAPE, generator=g), torch.randint(0, 10, (b,), generator=g)


def _client(spec, **kw):
    return Client(_model(spec), spec, DATA, protocol="fedavg", local_steps=1, local_lr=0.1, seed=3, **kw)


@pytest.mark.parametrize("spec", [LENET, CONVNET], ids=["lenet", "convnet-bn"])
@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 5e-4)])
def test_minibatch_epochs_equal_torch_sgd_on_the_clients_order(spec, momentum, wd):
    images, labels = _batch(5)
    obs = _client(spec, local_epochs=2, local_batch_size=2, momentum=momentum,
                  weight_decay=wd).share(images, labels)
    training = LocalTraining(0.1, epochs=2, batch_size=2, momentum=momentum, weight_decay=wd)
    order = torch.Generator().manual_seed(3 * 7 + 104729)  # the client's private stream (Client.order)
    steps = training.schedule(5, order)
    assert [len(s) for s in steps] == [2, 2, 1, 2, 2, 1] and obs.local_steps == 6
    assert sorted(steps[0] + steps[1] + steps[2]) == list(range(5))
    ref = _model(spec)
    ref.train()
    theta0 = {k: p.detach().clone() for k, p in ref.named_parameters()}
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    x = (images - torch.tensor(DATA.mean).view(1, 3, 1, 1)) / torch.tensor(DATA.std).view(1, 3, 1, 1)
    for s in steps:
        opt.zero_grad()
        F.cross_entropy(ref(x[s]), labels[s]).backward()
        opt.step()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(obs.update[name], theta0[name] - p.detach(), rtol=1e-4, atol=1e-6)
    assert (obs.local_epochs, obs.local_batch_size, obs.local_momentum, obs.local_weight_decay) == (2, 2, momentum, wd)


def test_minibatch_update_differs_from_full_batch_and_order_is_private():
    images, labels = _batch(4)
    mini = _client(LENET, local_epochs=1, local_batch_size=2).share(images, labels)
    full = Client(_model(LENET), LENET, DATA, protocol="fedavg", local_steps=2, local_lr=0.1).share(images, labels)
    assert max((mini.update[k] - full.update[k]).abs().max().item() for k in full.update) > 1e-5
    other = Client(_model(LENET), LENET, DATA, protocol="fedavg", local_steps=1, local_lr=0.1, seed=4,
                   local_epochs=1, local_batch_size=2).share(images, labels)
    assert max((mini.update[k] - other.update[k]).abs().max().item() for k in other.update) > 0  # another order


def test_observation_round_trip_keeps_the_local_training(tmp_path):
    images, labels = _batch(4)
    obs = _client(LENET, local_epochs=3, local_batch_size=2, momentum=0.5).share(images, labels)
    obs.save(tmp_path / "o")
    back = Observation.load(tmp_path / "o")
    assert back.local_training == LocalTraining(0.1, epochs=3, batch_size=2, momentum=0.5)
    assert back.local_steps == 6
    with pytest.raises(ObservationError, match="local_steps"):
        Observation(**{**{f: getattr(obs, f) for f in ("model", "parameters", "update", "batch_size", "data")},
                       "update_kind": "local_update", "local_lr": 0.1, "local_steps": 5, "local_epochs": 3,
                       "local_batch_size": 2})


def test_secure_aggregation_of_minibatch_clients_is_one_client_of_n_b():
    images, labels = _batch(8)
    obs = [_client(LENET, local_epochs=1, local_batch_size=2).share(images[i * 4:(i + 1) * 4], labels[i * 4:(i + 1) * 4])
           for i in range(2)]
    agg = aggregate(obs)
    assert (agg.batch_size, agg.local_batch_size, agg.local_steps) == (8, 4, 2)


@pytest.mark.parametrize("kwargs,match", [
    ({"protocol": "fedavg", "local_epochs": 2}, "local batch size"),
    ({"protocol": "fedavg", "local_batch_size": 2, "local_steps": 3}, "leave 'steps'"),
    ({"protocol": "fedsgd", "local_batch_size": 2}, "protocol: fedavg"),
    ({"protocol": "fedavg", "local_momentum": 1.0}, "less than 1"),
])
def test_threat_config_refuses_local_training_that_cannot_be(kwargs, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        ThreatConfig(**kwargs)


def test_client_refuses_epochs_without_a_batch_size():
    with pytest.raises(ConfigError, match="local batch size"):
        _client(LENET, local_epochs=2)
