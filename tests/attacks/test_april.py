"""APRIL (Lu et al., CVPR 2022): closed-form recovery of one input through a ViT's position-embedding gradient.

Measured (embedded photos 0, 5, 11, 23, ViT dim 96 / depth 4 / patch 4 built with seed 0, FedSGD, B=1):
83-96 dB PSNR, rank G = 64 = N, condition number ~1e4, relative residual ~1e-7 (float32 gradients);
FedAvg with one local step (lr 0.1): 57-74 dB, the float32 difference theta_0 - theta_1 costing ~20 dB.
"""

from __future__ import annotations

import math

import pytest
import torch

from gradaudit.attacks.analytic import APRIL
from gradaudit.attacks.registry import build_attack
from gradaudit.data import load_dataset
from gradaudit.errors import ConfigError
from gradaudit.metrics import psnr
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec
from gradaudit.threat.threat_model import ThreatModel, applies


@pytest.fixture(scope="module")
def data(single_thread):
    return load_dataset("embedded")


def _observe(data, indices, name="vit", kwargs=None, **client):
    images, labels = data.batch(indices)
    spec = ModelSpec(name, data.num_classes, data.shape, dict(kwargs or {}))
    torch.manual_seed(0)
    model = build_model(spec)
    obs = Client(model, spec, DataSpec(data.name, data.mean, data.std), **client).share(images, labels)
    return obs, images


@pytest.mark.parametrize("index", [0, 5, 11, 23])
def test_a_single_photo_is_recovered(data, index):
    obs, images = _observe(data, [index])
    rec = APRIL().reconstruct(obs)
    value = float(psnr(rec.images, images)[0])
    print(f"APRIL photo {index}: {value:.1f} dB, rank {rec.config['rank']}, condition "
          f"{rec.config['condition']:.3g}, residual {rec.config['residual']:.2g}")
    assert rec.images.shape == images.shape and rec.images.dtype == torch.float32
    assert value >= 40                                              # measured 83-96 dB
    assert rec.config["patches"] == 64 and rec.config["rank"] == 64 and math.isfinite(rec.config["condition"])
    assert rec.config["residual"] < 1e-5                            # a consistent system (float32 rounding only)
    assert rec.labels is not None and torch.equal(rec.labels, obs.labels) and rec.label_source == "given"


def test_grayscale_28x28_with_its_own_normalisation(single_thread):
    """One channel, 49 patches, a mean/std far from 0/1: the un-normalisation and patch folding must be right."""
    spec = ModelSpec("vit", 10, (1, 28, 28), {"depth": 2})
    torch.manual_seed(3)
    model = build_model(spec)
    image = torch.rand(1, 1, 28, 28)
    obs = Client(model, spec, DataSpec("synthetic", (0.3,), (0.2,))).share(image, torch.tensor([4]))
    rec = build_attack("april").reconstruct(obs)
    assert rec.config["patches"] == 49 and rec.config["rank"] == 49
    assert float((rec.images - image).abs().max()) < 1e-3


def test_fedavg_one_local_step(data):
    obs, images = _observe(data, [7], protocol="fedavg", local_steps=1, local_lr=0.1)
    assert obs.update_kind != "gradient"
    rec = APRIL().reconstruct(obs)
    assert float(psnr(rec.images, images)[0]) >= 40


def test_too_narrow_an_embedding_is_underdetermined(data):
    """dim < N: rank G <= dim < N, the system has a whole null space of solutions and the image is lost."""
    obs, images = _observe(data, [0], kwargs={"dim": 32, "heads": 4})
    rec = APRIL().reconstruct(obs)
    assert rec.config["rank"] <= 32 < rec.config["patches"] == 64
    assert rec.config["condition"] == float("inf")
    assert float(psnr(rec.images, images)[0]) < 30


def test_noise_shows_in_the_residual(data):
    from gradaudit.defenses.registry import parse_defense

    images, labels = data.batch([0])
    spec = ModelSpec("vit", data.num_classes, data.shape, {})
    torch.manual_seed(0)
    model = build_model(spec)
    obs = Client(model, spec, DataSpec(data.name, data.mean, data.std), transforms=[parse_defense("noise:0.01")],
                 seed=0).share(images, labels)
    rec = APRIL().reconstruct(obs)
    assert rec.config["residual"] > 1e-2
    assert float(psnr(rec.images, images)[0]) < 40


def test_batch_of_two_is_refused(data):
    obs, _ = _observe(data, [0, 1])
    with pytest.raises(ConfigError, match="B=1.*inverting-gradients"):
        APRIL().reconstruct(obs)


def test_needs_a_vit(data):
    obs, _ = _observe(data, [0], name="mlp", kwargs={"width": 16})
    with pytest.raises(ConfigError, match="patch_embed.weight.*pos_embed"):
        APRIL().reconstruct(obs)
    with pytest.raises(ConfigError, match="'my_pos'"):
        APRIL(position="my_pos").reconstruct(_observe(data, [0], kwargs={"depth": 1})[0])


def test_threat_declaration_and_registry():
    threat = APRIL.threat
    assert threat.max_batch == 1 and threat.labels == "ignores" and not threat.aggregate
    assert applies(threat, ThreatModel(), "vit", 1) == (True, "")
    assert not applies(threat, ThreatModel(), "mlp", 1)[0]
    assert not applies(threat, ThreatModel(), "vit", 2)[0]
    assert not applies(threat, ThreatModel(clients=3), "vit", 1)[0]
    assert isinstance(build_attack("april", cls_slots=1), APRIL)
    with pytest.raises(ConfigError, match="cls_slots"):
        APRIL(cls_slots=-1)


def test_inverting_gradients_runs_on_the_vit(data):
    """Smoke test: the gradient-matching engine (functional_call + vmap, double backward) handles the ViT."""
    obs, images = _observe(data, [3])
    rec = build_attack("inverting-gradients", iterations=20).reconstruct(obs)
    assert rec.images.shape == images.shape
    assert bool(torch.isfinite(rec.images).all()) and math.isfinite(rec.matching_loss)
    assert 0 <= float(rec.images.min()) <= float(rec.images.max()) <= 1


def test_a_vit_observation_saves_and_loads_and_april_still_recovers_it(tmp_path, single_thread):
    """The ViT's gradients for cls_token and pos_embed come back from autograd as views of one buffer; the
    observation file must still be written (each tensor its own storage) and read back exactly."""
    from gradaudit.threat import Observation

    data = load_dataset("embedded")
    images, labels = data.batch([7])
    spec = ModelSpec("vit", data.num_classes, data.shape, {})
    torch.manual_seed(0)
    obs = Client(build_model(spec), spec, DataSpec(data.name, data.mean, data.std)).share(images, labels)
    obs.save(tmp_path / "vit")
    back = Observation.load(tmp_path / "vit")
    assert all(torch.equal(back.update[k], obs.update[k]) for k in obs.update)
    assert float(psnr(build_attack("april").reconstruct(back).images, images)) >= 40.0


def test_april_recovers_the_label_by_idlg_when_the_server_does_not_know_it(single_thread):
    from gradaudit.threat import ServerKnowledge

    data = load_dataset("embedded")
    for index in (3, 40):
        images, labels = data.batch([index])
        spec = ModelSpec("vit", data.num_classes, data.shape, {})
        torch.manual_seed(0)
        obs = Client(build_model(spec), spec, DataSpec(data.name, data.mean, data.std),
                     knowledge=ServerKnowledge(labels=False)).share(images, labels)
        rec = build_attack("april").reconstruct(obs)
        assert rec.label_source == "idlg" and rec.labels.tolist() == labels.tolist()
