"""SPEAR: exact batch recovery from the MLP's first layer (low rank + ReLU sparsity).

Measured (embedded photos 32x32, MLP width 256, FedSGD, labels unknown): B = 1-16 recovered exactly (every
image >= 88 dB, PSNR capped at 100) with every label, B = 8 in under a second; Gaussian noise of 1e-4 on the
update brings B = 4 down to 60-67 dB (no longer flagged exact) and B = 8 to noise; 1e-3 breaks B = 4 too.
"""

from __future__ import annotations

import pytest
import torch

from gradaudit.attacks.analytic.spear import SPEAR, null_vectors
from gradaudit.attacks.registry import attack_threat, build_attack
from gradaudit.data import load_dataset
from gradaudit.defenses.registry import parse_defense
from gradaudit.errors import ConfigError
from gradaudit.metrics import psnr, score_reconstruction
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge


@pytest.fixture(scope="module")
def data(single_thread):
    return load_dataset("embedded")


def _observe(data, indices, model="mlp", defenses=(), protocol="fedsgd", **kwargs):
    images, labels = data.batch(indices)
    spec = ModelSpec(model, data.num_classes, data.shape, kwargs)
    torch.manual_seed(0)
    client = Client(build_model(spec), spec, DataSpec(data.name, data.mean, data.std),
                    transforms=[parse_defense(d) for d in defenses], knowledge=ServerKnowledge(labels=False),
                    seed=0, protocol=protocol, local_lr=0.1 if protocol == "fedavg" else None)
    return client.share(images, labels), images, labels


def test_null_vectors_are_orthogonal_to_their_rows():
    rows = torch.randn(50, 5, 6, dtype=torch.float64)
    q, ok = null_vectors(rows)
    assert ok.all() and torch.allclose(q.norm(dim=1), torch.ones(50, dtype=torch.float64))
    assert (rows @ q.unsqueeze(-1)).abs().max() < 1e-10


@pytest.mark.parametrize("b", [1, 4, 8])
def test_spear_recovers_the_whole_batch_exactly_with_its_labels(data, b):
    obs, images, labels = _observe(data, list(range(3, 3 + 7 * b, 7))[:b])
    assert obs.labels is None                                  # the server does not know them
    rec = build_attack("spear").reconstruct(obs)
    scores = score_reconstruction(rec.images, images, labels, rec.labels)
    assert rec.config["exact"] and rec.config["directions"] == b and all(rec.config["consistent"])
    assert min(scores.psnr) >= 60.0
    assert scores.label_accuracy == 1.0 and rec.label_source == "recovered (spear)"


def test_spear_twelve_images_exact(data):
    obs, images, _ = _observe(data, list(range(0, 60, 5)))
    rec = SPEAR(time_budget=60).reconstruct(obs)
    best = torch.stack([psnr(rec.images, img.expand_as(rec.images)).max() for img in images])
    assert rec.config["exact"] and best.min() >= 60.0


def test_noise_breaks_the_exact_structure_and_the_attack_says_so(data):
    obs, images, _ = _observe(data, [1, 9, 17, 25], defenses=("noise:0.001",))
    rec = SPEAR(time_budget=3, chunk=2048).reconstruct(obs)
    assert not rec.config["exact"]
    assert rec.config["rank_gap"] < 100                        # sigma_B / sigma_{B+1}: no clean rank-B gradient
    assert score_reconstruction(rec.images, images).mean_psnr < 30


def test_clipping_keeps_the_rank_so_spear_stays_exact(data):
    obs, images, _ = _observe(data, [2, 10, 18, 26], defenses=("clip:0.001",))
    rec = build_attack("spear").reconstruct(obs)
    assert rec.config["exact"] and min(score_reconstruction(rec.images, images).psnr) >= 60.0


def test_spear_refuses_models_without_the_layer_and_too_large_batches(data):
    obs, _, _ = _observe(data, [0], model="lenet")
    with pytest.raises(ConfigError, match="fc1"):
        SPEAR().reconstruct(obs)
    wide, _, _ = _observe(data, list(range(8)), width=8)
    with pytest.raises(ConfigError, match="B < width"):
        SPEAR().reconstruct(wide)
    with pytest.raises(ConfigError):
        SPEAR(min_zeros=1.5)


def test_spear_declares_an_honest_server_threat_model():
    threat = attack_threat("spear")
    assert threat.server == "honest" and threat.labels == "ignores" and threat.models == ()


def test_the_last_direction_follows_from_the_other_b_minus_1(data):
    """The hardest sample (fewest neurons off) need not be drawn: a^T dW / a^T db with a orthogonal to the
    B-1 known directions is its input, and its ReLU pattern gives its direction."""
    import torch.nn.functional as F

    obs, images, labels = _observe(data, [4, 12, 20, 28, 36, 44])
    model = build_model(obs.model)
    model.load_state_dict(obs.parameters, strict=False)
    truth = []
    for i in range(len(images)):
        z1 = model.fc1(data.normalize(images[i:i + 1]).flatten(1))
        g = torch.autograd.grad(F.cross_entropy(model.fc2(torch.relu(z1)), labels[i:i + 1]), z1)[0][0]
        truth.append((g / g.norm()).double())
    f64 = dict(dtype=torch.float64)
    dw, db = obs.update["fc1.weight"].to(**f64), obs.update["fc1.bias"].to(**f64)
    basis = torch.linalg.svd(dw, full_matrices=False).U[:, :6]
    last = SPEAR._last_direction(truth[:5], basis, dw, db, obs.parameters["fc1.weight"].to(**f64),
                                 obs.parameters["fc1.bias"].to(**f64), 1e-4)
    assert last is not None and abs(float(last[0] @ truth[5])) > 1 - 1e-6
