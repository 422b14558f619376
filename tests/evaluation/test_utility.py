"""Utility of a defense: federated training through the audit's own Client (seed 002 Table 5)."""

from __future__ import annotations

import math

import pytest
import torch

from gradaudit.data import load_dataset
from gradaudit.defenses.pruning import GradientPruning
from gradaudit.errors import ConfigError, DataNotFoundError
from gradaudit.evaluation import utility as U
from gradaudit.evaluation.sweep import defense_label as sweep_defense_label
from gradaudit.evaluation.store import ResultsStore
from gradaudit.threat.client import Client

ROUNDS = 60  # quick; the default (300) is for real measurements


@pytest.fixture(autouse=True, scope="module")
def _single_thread(single_thread):
    yield


@pytest.fixture(scope="module")
def baseline():
    return U.measure_utility([], rounds=ROUNDS, seed=0)


def test_training_without_defense_lowers_the_training_loss(baseline):
    assert baseline.defense == "none"
    assert baseline.curve[0][0] == 0 and baseline.curve[-1][0] == ROUNDS
    assert math.isclose(baseline.final_train_loss, baseline.curve[-1][1], rel_tol=1e-9)
    # from ~4.45 (the DLG init's random logits) to ~0.2 in 60 rounds
    assert baseline.final_train_loss < 0.25 * baseline.initial_train_loss
    assert 0.0 <= baseline.test_accuracy <= 1.0
    assert baseline.config["train_images"] == 48 and baseline.config["test_images"] == 16


def test_strong_pruning_costs_clearly_more_training_loss(baseline):
    pruned = U.measure_utility(["prune:0.999"], rounds=ROUNDS, seed=0)
    assert pruned.defense == "prune:0.999"
    assert pruned.initial_train_loss == pytest.approx(baseline.initial_train_loss)  # same seed, same start
    assert pruned.final_train_loss > baseline.final_train_loss + 1.0  # measured 2.60 vs 0.20


def test_same_seed_same_result_and_other_seed_differs():
    a = U.measure_utility(["noise:0.1"], rounds=20, seed=3)
    b = U.measure_utility(["noise:0.1"], rounds=20, seed=3)
    c = U.measure_utility(["noise:0.1"], rounds=20, seed=4)
    assert a.curve == b.curve
    assert (a.final_train_loss, a.test_accuracy) == (b.final_train_loss, b.test_accuracy)
    assert a.curve != c.curve


def test_the_defense_is_applied_by_the_client_to_every_update(monkeypatch):
    shares, prunes, seen_transforms = [], [], []
    real_share, real_prune = Client.share, GradientPruning.__call__

    def share(self, images, labels):
        shares.append(images.shape[0])
        seen_transforms.append([t.describe() for t in self.transforms])
        return real_share(self, images, labels)

    def prune(self, update, generator=None):
        prunes.append(self.p)
        return real_prune(self, update, generator)

    monkeypatch.setattr(Client, "share", share)
    monkeypatch.setattr(GradientPruning, "__call__", prune)
    U.measure_utility(["prune:0.9"], rounds=5, clients=3, batch_size=4)
    assert shares == [4] * 15  # 5 rounds x 3 clients, each a minibatch of 4
    assert prunes == [0.9] * 15  # every shared update went through the transform, once
    assert all(t == ["prune:0.9"] for t in seen_transforms)


def test_server_applies_the_mean_of_the_shared_updates(monkeypatch):
    """FedSGD, one round: theta_1 = theta_0 - lr * mean of what the clients shared."""
    captured, models = [], []
    real_share = Client.share

    def share(self, images, labels):
        obs = real_share(self, images, labels)
        captured.append({k: v.clone() for k, v in obs.update.items()})
        if not models:
            models.append(({k: v.detach().clone() for k, v in self.model.named_parameters()}, self.model))
        return obs

    monkeypatch.setattr(Client, "share", share)
    U.measure_utility(["noise:0.01"], rounds=1, clients=2, batch_size=3, lr=0.5)
    theta0, model = models[0]
    for name, p in model.named_parameters():
        expected = theta0[name] - 0.5 * (captured[0][name] + captured[1][name]) / 2
        torch.testing.assert_close(p.detach(), expected)


def test_fedavg_trains_too():
    r = U.measure_utility([], rounds=30, protocol="fedavg", local_steps=2, lr=0.05)
    assert r.config["protocol"] == "fedavg" and r.config["local_steps"] == 2
    assert r.final_train_loss < 0.5 * r.initial_train_loss


def test_embedded_split_is_stratified_disjoint_and_fixed():
    train, test = U.load_splits("embedded")
    assert (len(train), len(test)) == (48, 16)
    assert torch.bincount(train.labels).tolist() == [6] * 8
    assert torch.bincount(test.labels).tolist() == [2] * 8
    full = load_dataset("embedded")
    as_rows = lambda d: {bytes(img.flatten().tolist()) for img in d.images}
    assert not as_rows(train) & as_rows(test)
    assert as_rows(train) | as_rows(test) == as_rows(full)
    train2, test2 = U.load_splits("embedded")
    assert torch.equal(train.images, train2.images) and torch.equal(test.labels, test2.labels)


def test_fashion_mnist_uses_stratified_subsets(fashion_mnist_root):
    with pytest.raises(DataNotFoundError):  # the suite hides every installed copy
        U.load_splits("fashion-mnist")
    train, test = U.load_splits("fashion-mnist", data_root=str(fashion_mnist_root))
    assert (len(train), len(test)) == (2000, 1000)
    assert torch.bincount(train.labels).tolist() == [200] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    small, _ = U.load_splits("fashion-mnist", data_root=str(fashion_mnist_root), train_size=95, test_size=10)
    assert len(small) == 95 and torch.bincount(small.labels).max() - torch.bincount(small.labels).min() <= 1


def test_utility_key_is_stable_and_specific():
    k = U.utility_key(["prune:0.9"], rounds=10)
    assert k == U.utility_key("prune:0.90", rounds=10, progress=print, threads=2)
    assert k.startswith("utility/prune:0.9/embedded/lenet/")
    assert k != U.utility_key(["prune:0.9"], rounds=11)
    assert k != U.utility_key(["prune:0.5"], rounds=10)
    assert U.utility_key([]) == U.utility_key(["none"]) == U.utility_key(None)


def test_defense_label_is_the_sweeps_label():
    from gradaudit.evaluation.sweep import split_chain

    assert U.defense_label is sweep_defense_label  # one function, so utility rows join the sweep's cells
    assert U.defense_label([]) == "none"
    assert U.defense_label(["dpsgd:1,1.1", "prune:0.9"]) == "dpsgd:C=1,sigma=1.1 + prune:0.9"
    assert U.defense_label("dpsgd:1,1.1 + prune:0.90") == "dpsgd:C=1,sigma=1.1 + prune:0.9"
    assert split_chain("dpsgd:C=1,sigma=1.1 + prune:0.9") == ["dpsgd:C=1,sigma=1.1 ", " prune:0.9"]
    assert split_chain("clip:1e+06+noise:0.1") == ["clip:1e+06", "noise:0.1"]


@pytest.mark.parametrize("kwargs, match", [
    ({"defense_specs": ["prune:2"]}, "pruning fraction"),
    ({"defense_specs": ["bogus:1"]}, "unknown defense"),
    ({"defense_specs": [], "protocol": "sgd"}, "protocol"),
    ({"defense_specs": [], "clients": 49}, "49 clients"),
    ({"defense_specs": [], "lr": -1.0}, "lr"),
    ({"defense_specs": [], "rounds": 2.5}, "rounds"),
    ({"defense_specs": [], "train_size": 100}, "train_size"),
])
def test_bad_input_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        U.measure_utility(**kwargs)


def test_store_utility_adds_baseline_and_skips_stored_keys(tmp_path, monkeypatch):
    calls = []
    real = U.measure_utility

    def counting(specs, **kw):
        calls.append(U.defense_label(specs))
        return real(specs, **kw)

    monkeypatch.setattr(U, "measure_utility", counting)
    with ResultsStore(tmp_path) as store:
        first = U.store_utility(store, ["prune:0.9"], rounds=3)
        assert calls == ["none", "prune:0.9"]
        assert [(r.defense, new) for r, new in first] == [("none", True), ("prune:0.9", True)]
        again = U.store_utility(store, ["prune:0.9", "noise:0.1"], rounds=3)
        assert calls == ["none", "prune:0.9", "noise:0.1"]  # only the new one was trained
        assert [(r.defense, new) for r, new in again] == [("none", False), ("prune:0.9", False),
                                                         ("noise:0.1", True)]
        rows = {r.defense: r for r in store.utility()}
    assert set(rows) == {"none", "prune:0.9", "noise:0.1"}
    row = rows["prune:0.9"]
    assert row.key == U.utility_key(["prune:0.9"], rounds=3)
    assert (row.dataset, row.model) == ("embedded", "lenet")
    assert row.config["rounds"] == 3 and len(row.config["curve"]) == 4
    assert row.final_train_loss == pytest.approx(row.config["curve"][-1][1])
