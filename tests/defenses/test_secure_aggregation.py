"""Secure aggregation: the server's one observation of N clients is the mean gradient of their joint batch."""

from __future__ import annotations

import pytest
import torch

from gradaudit.defenses import GaussianNoise, SecureAggregation
from gradaudit.threat import aggregate
from gradaudit.errors import ConfigError, ObservationError
from gradaudit.threat import Client, ServerKnowledge

from _defense_helpers import CONVNET, DATA, LENET, MLP, batch, model


def _clients_and_batches(spec, sizes, seed=0, **kw):
    net = model(spec, seed)
    batches = [batch(b, seed=10 + i) for i, b in enumerate(sizes)]
    obs = [Client(net, spec, DATA, **kw).share(x, y) for x, y in batches]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    return net, obs, images, labels


@pytest.mark.parametrize("spec", [LENET, MLP], ids=["lenet", "mlp"])
def test_sum_over_n_equals_mean_gradient_of_concatenated_batch(spec):
    net, obs, images, labels = _clients_and_batches(spec, [2, 2, 2])
    agg = aggregate(obs, 3)
    joint = Client(net, spec, DATA).share(images, labels)
    summed = {k: sum(o.update[k] for o in obs) for k in joint.update}
    for k in joint.update:
        torch.testing.assert_close(agg.update[k], joint.update[k], rtol=0, atol=1e-6)
        torch.testing.assert_close(summed[k] / 3, joint.update[k], rtol=0, atol=1e-6)
    assert agg.batch_size == 6 and agg.update_kind == "gradient"
    assert torch.equal(agg.labels, labels)
    assert agg.bn_statistics is None
    assert agg.defenses == ["secagg:3"] and agg.extras["num_clients"] == 3
    for k in joint.parameters:
        assert torch.equal(agg.parameters[k], joint.parameters[k])


def test_unequal_batches_are_weighted_by_batch_size():
    net, obs, images, labels = _clients_and_batches(LENET, [1, 2, 4])
    agg = aggregate(obs)
    joint = Client(net, LENET, DATA).share(images, labels)
    for k in joint.update:
        torch.testing.assert_close(agg.update[k], joint.update[k], rtol=0, atol=1e-6)
    assert agg.batch_size == 7


def test_metadata_bn_statistics_hidden_labels_unknown_and_defenses_kept():
    _, obs, _, _ = _clients_and_batches(CONVNET, [2, 2], knowledge=ServerKnowledge(labels=False, bn_statistics=True))
    assert all(o.bn_statistics is not None for o in obs)
    agg = aggregate(obs, 2)
    assert agg.bn_statistics is None and agg.labels is None
    _, obs, _, _ = _clients_and_batches(LENET, [2, 2], transforms=[GaussianNoise(0.01)], seed=0)
    agg = aggregate(obs, 2)
    assert agg.defenses == ["noise:0.01", "secagg:2"]


def test_fedavg_local_updates_are_averaged():
    _, obs, _, _ = _clients_and_batches(MLP, [3, 3], protocol="fedavg", local_steps=2, local_lr=0.1)
    agg = aggregate(obs, 2)
    assert agg.update_kind == "local_update" and agg.local_steps == 2 and agg.local_lr == 0.1
    for k in agg.update:
        torch.testing.assert_close(agg.update[k], (obs[0].update[k] + obs[1].update[k]) / 2)


def test_mismatched_rounds_are_refused():
    _, obs, _, _ = _clients_and_batches(LENET, [2, 2])
    other = Client(model(LENET, seed=1), LENET, DATA).share(*batch(2, seed=99))  # a different theta_0
    with pytest.raises(ObservationError, match="theta_0"):
        aggregate(obs + [other], 3)
    with pytest.raises(ObservationError, match="3 clients got 2"):
        aggregate(obs, 3)
    noisy = Client(model(LENET), LENET, DATA, transforms=[GaussianNoise(0.1)]).share(*batch(2, seed=98))
    with pytest.raises(ObservationError, match="defenses"):
        aggregate(obs + [noisy], 3)
    fedavg = Client(model(LENET), LENET, DATA, protocol="fedavg", local_steps=1, local_lr=0.1).share(*batch(2))
    with pytest.raises(ObservationError, match="protocol"):
        aggregate(obs + [fedavg], 3)


def test_validation_and_describe():
    assert SecureAggregation(4).describe() == "secagg:4"
    for bad in (1, 0, -2, 2.5, True):
        with pytest.raises(ConfigError):
            SecureAggregation(bad)
