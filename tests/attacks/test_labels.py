"""Label recovery: iDLG is exact for B=1; counting recovers most of a batch's label multiset."""

import pytest
import torch

from gradaudit.attacks.matching.labels import recover_labels
from gradaudit.metrics import label_accuracy
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

DATA = DataSpec("t", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _obs(name, labels, seed=0, protocol="fedsgd"):
    torch.manual_seed(seed)
    spec = ModelSpec(name, 10, (3, 32, 32))
    model = build_model(spec)
    x = torch.rand(len(labels), 3, 32, 32)
    client = Client(model, spec, DATA, protocol=protocol, local_steps=2 if protocol == "fedavg" else 1,
                    local_lr=0.01 if protocol == "fedavg" else None, knowledge=ServerKnowledge(labels=False))
    return client.share(x, torch.tensor(labels))


@pytest.mark.parametrize("name", ["lenet", "convnet", "mlp", "resnet18"])
@pytest.mark.parametrize("label", [0, 7])
def test_idlg_is_exact_for_single_images(name, label):
    labels, method = recover_labels(_obs(name, [label]))
    assert method == "idlg" and labels.tolist() == [label]


@pytest.mark.parametrize("name", ["lenet", "convnet"])
def test_counting_recovers_batch_label_multiset(name):
    true = [1, 1, 3, 5, 5, 5, 8, 9]
    accs = []
    for seed in range(3):
        labels, method = recover_labels(_obs(name, true, seed=seed))
        assert method == "count" and len(labels) == len(true)
        accs.append(label_accuracy(labels, torch.tensor(true)))
    assert sum(accs) / len(accs) >= 0.75


def test_counting_finds_every_present_class():
    true = [0, 2, 4, 6]
    labels, _ = recover_labels(_obs("convnet", true))
    assert sorted(set(labels.tolist())) == true


@pytest.mark.parametrize("name", ["convnet", "mlp"])
def test_idlg_falls_back_to_the_weight_rows_when_a_defense_dropped_the_label_bias(name):
    obs = _obs(name, [7])
    bias = [k for k in obs.update if k.endswith("bias")][-1]
    assert float(obs.update[bias][7]) < 0
    obs.update[bias][[2, 7]] = 0.0  # dropout zeroes entries at random: here the label's and another one
    labels, method = recover_labels(obs)
    assert method == "idlg-weights" and labels.tolist() == [7]
