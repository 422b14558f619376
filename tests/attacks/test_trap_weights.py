"""Trap weights (Boenisch et al., EuroS&P 2023): the malicious trap block and the closed-form read-out of its rows.

Measured (embedded photos, 32x32, B=64, K=512, rate 0.02, base mlp of width 32, FedSGD): 46 of the 64 photos
recovered at > 30 dB (order-free), all of them exact (> 90 dB) and exactly the 46 that some row fires for alone;
33 confirmed by two or more rows, and no blend among the images returned. Robbing the Fed's imprint with the same
512 malicious neurons recovers 61-62 of 64 on this batch: a trap row is a half-space w . x > q away from the
origin, so a low-contrast photo (small normalised norm) fires only rows that high-contrast photos fire too, and
is rarely alone (see ``benchmarks/beyond_malicious.py``).
"""

from __future__ import annotations

import math

import pytest
import torch

from gradaudit.attacks.analytic import TrapWeights
from gradaudit.attacks.registry import attack_names, build_attack
from gradaudit.data import load_dataset
from gradaudit.errors import ConfigError
from gradaudit.models import ModelSpec, build_model
from gradaudit.models.registry import MALICIOUS_MODELS
from gradaudit.models.trap import TrapWeightsModel, trap_threshold
from gradaudit.threat import Client, DataSpec
from gradaudit.metrics import psnr

SMALL_BASE = {"base": "mlp", "base_kwargs": {"width": 32}}


@pytest.fixture(scope="module")
def data(single_thread):
    return load_dataset("embedded")


def _observe(data, indices, **kwargs):
    images, labels = data.batch(indices)
    spec = ModelSpec("trap-weights", data.num_classes, data.shape, {**SMALL_BASE, **kwargs})
    torch.manual_seed(0)
    model = build_model(spec)
    obs = Client(model, spec, DataSpec(data.name, data.mean, data.std)).share(images, labels)
    return obs, images, model


def _best_psnr(reconstruction, images):
    """For every private image, the PSNR of the reconstruction that matches it best (order-free)."""
    return torch.stack([psnr(reconstruction, img.expand_as(reconstruction)).max() for img in images])


def _isolated(model, data, images) -> int:
    """Ground truth: samples that some trap row fires for alone (the attacker cannot compute this)."""
    pre = data.normalize(images).flatten(1) @ model.trap.weight.detach().T + model.trap.bias.detach()
    fires = pre > 0                                              # [B, K]
    alone = fires & (fires.sum(0, keepdim=True) == 1)
    return int(alone.any(1).sum())


def test_the_trap_block_has_the_attack_structure(single_thread):
    model = TrapWeightsModel(10, (3, 16, 16), neurons=64, rate=0.05, **SMALL_BASE)
    w, b = model.trap.weight.detach(), model.trap.bias.detach()
    assert torch.allclose(w.norm(dim=1), torch.ones(64))                   # unit random directions ...
    assert float((w @ w.T - torch.eye(64)).abs().max()) < 0.2             # ... all different
    assert torch.allclose(b, torch.full((64,), -trap_threshold(0.05)))
    assert -b[0].item() == pytest.approx(1.6449, abs=1e-3)                # Phi^-1(0.95)
    # under the prior (w . x ~ N(0, 1) for x ~ N(0, I)) each row fires for about `rate` of the inputs
    x = torch.randn(20000, 3 * 16 * 16, generator=torch.Generator().manual_seed(1))
    rate = float(((x @ w.T + b) > 0).float().mean())
    assert rate == pytest.approx(0.05, abs=0.004)
    u = model.trap_out.weight.detach()
    assert torch.allclose(u.norm(dim=0), torch.full((64,), 1e-2 / 64))    # small, distinct columns
    assert float(torch.corrcoef(u.T).fill_diagonal_(0).abs().max()) < 0.3
    assert model(torch.randn(4, 3, 16, 16)).shape == (4, 10)
    torch.manual_seed(123)
    again = TrapWeightsModel(10, (3, 16, 16), neurons=64, rate=0.05, **SMALL_BASE)
    assert torch.equal(again.trap.weight, model.trap.weight) and torch.equal(again.trap_out.weight, u)
    assert {"trap-weights", "fishing", "imprint"} <= MALICIOUS_MODELS


def test_the_papers_negative_scaling_rows(data):
    """rate=None: Gaussian pixel-space rows whose negative weights are scaled by s; on [0, 1] pixels they fire
    rarely, and the layer on normalised inputs computes exactly a . p."""
    model = TrapWeightsModel(data.num_classes, data.shape, rate=None, negative_scale=1.1, pixel_mean=data.mean,
                             pixel_std=data.std, neurons=256, **SMALL_BASE)
    images, _ = data.batch(list(range(64)))
    pre = data.normalize(images).flatten(1) @ model.trap.weight.detach().T + model.trap.bias.detach()
    # the same neuron on pixels: a = W / std (per channel), a . p = W . x + b
    std = torch.tensor(data.std).repeat_interleave(32 * 32)
    a = model.trap.weight.detach() / std
    assert torch.allclose(images.flatten(1) @ a.T, pre, atol=1e-3)
    assert float((a < 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    fired = float((pre > 0).float().mean())
    assert 0.0 < fired < 0.2


def test_bad_trap_settings_are_config_errors():
    with pytest.raises(ConfigError, match="base"):
        TrapWeightsModel(base="imprint")
    with pytest.raises(ConfigError, match="base"):
        TrapWeightsModel(base="trap-weights")
    with pytest.raises(ConfigError, match="rate"):
        TrapWeightsModel(rate=1.5)
    with pytest.raises(ConfigError, match="negative_scale"):
        TrapWeightsModel(rate=None)
    with pytest.raises(ConfigError, match="not both"):
        TrapWeightsModel(rate=0.02, negative_scale=1.1)
    with pytest.raises(ConfigError, match="neurons"):
        TrapWeightsModel(neurons=0)
    with pytest.raises(ConfigError, match="prior_std"):
        TrapWeightsModel(prior_std=0.0)
    with pytest.raises(ConfigError, match="pixel_mean"):
        TrapWeightsModel(rate=None, negative_scale=1.1, pixel_mean=(0.5, 0.5))
    with pytest.raises(ConfigError, match="rejected its arguments"):
        build_model(ModelSpec("trap-weights", 10, (3, 32, 32), {"bins": 8}))


def test_a_single_sample_is_recovered_exactly(data):
    obs, images, model = _observe(data, [4], neurons=256, rate=0.1)
    rec = build_attack("trap-weights").reconstruct(obs)
    fired = int(((data.normalize(images).flatten(1) @ model.trap.weight.T + model.trap.bias) > 0).sum())
    # every row that fires for the one sample isolates it: they all agree, so it is confirmed
    assert fired >= 10 and rec.config["rows_nonzero"] == fired == rec.config["candidates"]
    assert rec.config["distinct"] == 1 and rec.config["confirmed"] == 1
    assert float((rec.images - images).abs().max()) < 1e-5


def test_a_batch_of_64_with_512_trap_neurons(data):
    obs, images, model = _observe(data, list(range(64)), neurons=512, rate=0.02)
    rec = TrapWeights().reconstruct(obs)
    best = _best_psnr(rec.images, images)
    good, exact = int((best > 30).sum()), int((best > 90).sum())
    isolated = _isolated(model, data, images)
    cfg = rec.config
    print(f"trap weights B=64 K=512: {good}/64 > 30 dB ({exact} exact), {isolated} isolated by some row; "
          f"{cfg['rows_nonzero']} rows fired, {cfg['candidates']} candidates, {cfg['distinct']} distinct, "
          f"{cfg['confirmed']} confirmed, {rec.seconds:.2f} s")
    assert good == exact == isolated                 # every isolated sample is exact, and nothing else is > 30 dB
    assert good >= 40                                # measured 46
    assert 28 <= cfg["confirmed"] <= good <= cfg["distinct"] <= good + 4 <= 68   # measured 33 <= 46 <= 46
    assert rec.images.shape == images.shape and 0 <= float(rec.images.min()) <= float(rec.images.max()) <= 1
    # the confirmed images come first, and all are exact
    assert bool((_best_psnr(images, rec.images[: cfg["confirmed"]]) > 90).all())


def test_an_unarmed_control_recovers_less(data):
    """The same rows with a bias that lets them fire for half the inputs (rate 0.5) isolate almost nothing."""
    obs, images, _ = _observe(data, list(range(64)), neurons=512, rate=0.5)
    rec = TrapWeights().reconstruct(obs)
    assert int((_best_psnr(rec.images, images) > 30).sum()) <= 2


def test_needs_the_trap_model(data):
    images, labels = data.batch([0, 1])
    spec = ModelSpec("imprint", data.num_classes, data.shape, {**SMALL_BASE, "bins": 8})
    torch.manual_seed(0)
    obs = Client(build_model(spec), spec, DataSpec(data.name, data.mean, data.std)).share(images, labels)
    with pytest.raises(ConfigError, match="trap-weights"):
        TrapWeights().reconstruct(obs)
    with pytest.raises(ConfigError, match="rtol"):
        TrapWeights(rtol=-1.0)


def test_registry_and_threat():
    assert "trap-weights" in attack_names()
    attack = build_attack("trap-weights", merge_tol=1e-4)
    assert isinstance(attack, TrapWeights) and math.isclose(attack.merge_tol, 1e-4)
    threat = TrapWeights.threat
    assert threat.server == "malicious" and threat.models == ("trap-weights",) and threat.labels == "ignores"
