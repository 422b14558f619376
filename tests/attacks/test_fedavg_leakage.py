"""The FedAvg attack (Dimitrov et al. 2022): its simulation of the client's minibatch epochs reproduces the
observed update at the truth, the epoch alignment recovers the order, and it rebuilds a batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradaudit.attacks import build_attack
from gradaudit.attacks.matching.fedavg import MinibatchFedAvgObjective, aligned, epoch_permutations
from gradaudit.attacks.matching.victim import FunctionalVictim
from gradaudit.data import load_dataset
from gradaudit.errors import ConfigError
from gradaudit.metrics import score_reconstruction
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge


def _observation(n=4, b=2, epochs=2, lr=0.1, seed=0, size=16, momentum=0.0):
    ds = load_dataset("embedded", image_size=size)
    spec = ModelSpec("convnet", ds.num_classes, ds.shape, {"norm": "none", "width": 8})
    x, y = ds.batch([0, 9, 18, 27, 36, 45][:n])
    torch.manual_seed(seed)
    client = Client(build_model(spec), spec, DataSpec("embedded", tuple(ds.mean), tuple(ds.std)), protocol="fedavg",
                    local_steps=1, local_lr=lr, local_epochs=epochs, local_batch_size=b, momentum=momentum,
                    knowledge=ServerKnowledge(labels=True), seed=5)
    return client.share(x, y), x, y, ds


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_simulation_at_the_truth_reproduces_the_update(momentum):
    obs, x, y, ds = _observation(momentum=momentum)
    victim = FunctionalVictim(obs)
    objective = MinibatchFedAvgObjective(victim, obs, counts=torch.bincount(y, minlength=ds.num_classes),
                                         consensus=0.0, count_weight=0.0, distances=["cosine", "l2"])
    order = torch.Generator().manual_seed(5 * 7 + 104729)
    steps = obs.local_training.schedule(4, order)
    per_epoch = [steps[0] + steps[1], steps[2] + steps[3]]
    xn = (x - torch.tensor(ds.mean).view(1, 3, 1, 1)) / torch.tensor(ds.std).view(1, 3, 1, 1)
    copies = torch.cat([xn[o] for o in per_epoch])
    logits = torch.cat([F.one_hot(y[o], ds.num_classes).float() * 50 for o in per_epoch])
    a, w = objective.weights("cosine", {})
    _, (own, cosine, _) = objective(copies, logits, a, w)
    assert float(cosine) < 1e-5
    # other minibatches in the second epoch (two samples swapped between them) do not fit
    swap = [per_epoch[0], [per_epoch[1][i] for i in (0, 2, 1, 3)]]
    wrong = torch.cat([xn[o] for o in swap])
    wrong_logits = torch.cat([F.one_hot(y[o], logits.shape[1]).float() * 50 for o in swap])
    _, (_, cos_wrong, _) = objective(wrong, wrong_logits, a, w)
    assert float(cos_wrong) > 1e-4 and float(cos_wrong) > 100 * float(cosine)


def test_epoch_alignment_recovers_a_permutation_and_keeps_gradients():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 3, 4, 4, generator=g)
    perm = torch.tensor([3, 0, 4, 1, 2])
    x = torch.cat([base, base[perm] + 0.01 * torch.randn(5, 3, 4, 4, generator=g)]).requires_grad_(True)
    perms = epoch_permutations(x, 2)
    assert torch.equal(perm[perms[1]], torch.arange(5))
    out = aligned(x, perms)
    assert out.shape == (2, 5, 3, 4, 4)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_fedavg_leakage_rebuilds_a_minibatch_fedavg_client():
    obs, x, y, _ = _observation()
    rec = build_attack("fedavg-leakage", iterations=200, tune="off", tv=1e-2).reconstruct(obs)
    assert rec.images.shape == x.shape
    s = score_reconstruction(rec.images, x, true_labels=y, predicted_labels=rec.labels)
    assert s.label_accuracy == 1.0
    assert s.mean_psnr > 15.0, s.mean_psnr  # a grey image scores 10-12 dB here


def test_fedavg_leakage_refuses_joint_labels():
    with pytest.raises(ConfigError, match="multiset"):
        build_attack("fedavg-leakage", labels="joint")
