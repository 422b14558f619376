"""The engine's objective is exact at the ground truth: the attacker's functional victim reproduces the
client's update (FedSGD and unrolled FedAvg) and the private batch's BN statistics."""

import pytest
import torch

from gradaudit.attacks.matching.engine import GradientMatchingAttack, bn_targets_for
from gradaudit.attacks.matching.victim import FunctionalVictim
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

DATA = DataSpec("t", (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))


def _observe(name, B=3, protocol="fedsgd", K=1, seed=0, **kw):
    torch.manual_seed(seed)
    spec = ModelSpec(name, 10, (3, 16, 16), kw)
    model = build_model(spec)
    x = torch.rand(B, 3, 16, 16)
    y = torch.arange(B) % 10
    client = Client(model, spec, DATA, protocol=protocol, local_steps=K, local_lr=0.05 if protocol == "fedavg" else None,
                    knowledge=ServerKnowledge(labels=True, bn_statistics=True))
    return client.share(x, y), x, y


def _objective_at_truth(obs, x, y, **cfg):
    attack = GradientMatchingAttack(**cfg)
    setup = attack.setup(obs)  # the public set-up every attack on the engine composes
    a, w = setup.objective.weights(attack.config.distance, attack.config.regularizers)
    xn = (x - torch.tensor(DATA.mean).view(1, -1, 1, 1)) / torch.tensor(DATA.std).view(1, -1, 1, 1)
    total, (dist, _, _) = setup.objective(xn, y, a, w)
    return float(total), float(dist)


@pytest.mark.parametrize("name", ["lenet", "convnet", "mlp"])
@pytest.mark.parametrize("protocol,K", [("fedsgd", 1), ("fedavg", 3)])
def test_l2_distance_is_zero_at_the_private_batch(name, protocol, K):
    obs, x, y = _observe(name, protocol=protocol, K=K)
    total, dist = _objective_at_truth(obs, x, y, distance="l2", regularizers={})
    ref = sum(float((u ** 2).sum()) for u in obs.update.values())
    assert dist <= 1e-9 * max(ref, 1.0) + 1e-10


def test_wrong_batch_has_positive_distance():
    obs, x, y = _observe("lenet")
    _, dist = _objective_at_truth(obs, torch.rand_like(x), y, distance="l2", regularizers={})
    assert dist > 1e-3


def test_bn_prior_is_zero_at_the_private_batch():
    obs, x, y = _observe("convnet", width=4)
    assert obs.bn_statistics is not None and len(obs.bn_statistics) == 4
    total, dist = _objective_at_truth(obs, x, y, distance="cosine", regularizers={"bn": 1.0})
    assert abs(total - dist) < 1e-5
    total_wrong, dist_wrong = _objective_at_truth(obs, torch.rand_like(x), y, distance="cosine", regularizers={"bn": 1.0})
    assert total_wrong - dist_wrong > 1e-2


def test_bn_prior_falls_back_to_running_statistics_when_batch_statistics_unknown():
    obs, x, y = _observe("convnet", width=4)
    obs.bn_statistics = None
    targets = bn_targets_for(obs, FunctionalVictim(obs), torch.device("cpu"))
    assert len(targets) == 4
    torch.testing.assert_close(targets[0][0], torch.zeros(4))  # fresh running mean
    torch.testing.assert_close(targets[0][1], torch.ones(4))


@pytest.mark.parametrize("distance", ["cosine", "reweighted-cosine", "l2"])
def test_fitted_monitored_and_held_out_distances_are_the_tensor_forms(distance):
    """With tensors held out, the objective's three distances (read off shared per-tensor statistics) equal the
    distances computed tensor by tensor on the fitted set, on every tensor, and on the held-out set."""
    from gradaudit.attacks.matching.distances import cosine_distance, get_distance
    from gradaudit.attacks.matching.objective import func_param_grad

    obs, x, y = _observe("convnet", width=4)
    attack = GradientMatchingAttack(distance=distance, regularizers={}, holdout=0.25)
    objective = attack.setup(obs).objective
    assert objective.held_index and objective.fit_index
    a, w = objective.weights(distance, {})
    guess = torch.randn_like(x)
    total, (own, monitor, held) = objective(guess, y, a, w)
    u, _ = objective.update_of(guess, y, func_param_grad)
    t = objective.target
    fit = objective.fit_index
    assert float(own) == pytest.approx(float(get_distance(distance)([u[i] for i in fit], [t[i] for i in fit])),
                                       rel=1e-4)
    assert float(monitor) == pytest.approx(float(cosine_distance(u, t)), rel=1e-4)
    hi = objective.held_index
    assert float(held) == pytest.approx(float(cosine_distance([u[i] for i in hi], [t[i] for i in hi])), rel=1e-4)
    assert float(held) != pytest.approx(float(monitor), rel=1e-3)  # the held-out set is its own check
