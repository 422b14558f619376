"""OpacusClient: Opacus' DP-SGD agrees with gradaudit's own, models made private by Opacus can be victims."""

from __future__ import annotations

import math

import pytest
import torch

opacus = pytest.importorskip("opacus", reason="Opacus not installed (pip install 'gradaudit[integrations]')")

from gradaudit.attacks.registry import build_attack  # noqa: E402
from gradaudit.data import load_dataset  # noqa: E402
from gradaudit.defenses import DPSGD  # noqa: E402
from gradaudit.defenses.accountant import epsilon as own_epsilon  # noqa: E402
from gradaudit.defenses.dpsgd import per_sample_gradients  # noqa: E402
from gradaudit.errors import ConfigError  # noqa: E402
from gradaudit.integrations.opacus import OpacusClient, opacus_epsilon  # noqa: E402
from gradaudit.models.registry import ModelSpec, build_model  # noqa: E402
from gradaudit.threat.client import Client  # noqa: E402
from gradaudit.threat.observation import DataSpec  # noqa: E402


@pytest.fixture(scope="module")
def batch(single_thread):
    ds = load_dataset("embedded", image_size=16)
    images, labels = ds.batch([0, 9, 18, 27])
    return ds, DataSpec(ds.name, tuple(ds.mean), tuple(ds.std)), images, labels


def _norms(model, data, images, labels):
    c = Client(model, ModelSpec("x", 1, (3, 16, 16)), data)
    per = per_sample_gradients(model, c.normalize(images), labels)
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()))


@pytest.mark.parametrize("name,protocol", [("lenet", "fedsgd"), ("mlp", "fedsgd"), ("lenet", "fedavg")])
def test_clipped_noiseless_update_agrees_with_own_dpsgd(batch, name, protocol):
    ds, data, images, labels = batch
    spec = ModelSpec(name, ds.num_classes, ds.shape, {"width": 32} if name == "mlp" else {})
    torch.manual_seed(1)
    model = build_model(spec)
    norms = _norms(model, data, images, labels)
    clip = float(norms.median())  # about half the samples are clipped, half are not
    assert (norms > clip).any() and (norms < clip).any()
    kw = dict(protocol=protocol, local_steps=2 if protocol == "fedavg" else 1,
              local_lr=0.05 if protocol == "fedavg" else None)
    dp = DPSGD(clip=clip, noise_multiplier=0.0)
    ours = Client(model, spec, data, transforms=[dp], **kw).share(images, labels)
    theirs = OpacusClient(model, spec, data, dp=dp, **kw).share(images, labels)
    diff = max(float((ours.update[k] - theirs.update[k]).abs().max()) for k in ours.update)
    scale = max(float(ours.update[k].abs().max()) for k in ours.update)
    assert diff < 1e-5 and scale > 1e-3, (diff, scale)
    # and clipping really acted: the unclipped mean gradient is different
    plain = Client(model, spec, data, **kw).share(images, labels)
    assert max(float((plain.update[k] - theirs.update[k]).abs().max()) for k in ours.update) > 100 * diff


def test_noise_has_the_dpsgd_scale(batch):
    """B (g~ - clipped mean) / (sigma C) is standard normal in every coordinate."""
    ds, data, images, labels = batch
    spec = ModelSpec("lenet", ds.num_classes, ds.shape)
    torch.manual_seed(2)
    model = build_model(spec)
    clipped = OpacusClient(model, spec, data, dp=DPSGD(0.5, 0.0)).share(images, labels)
    noisy = OpacusClient(model, spec, data, dp=DPSGD(0.5, 2.0), seed=7).share(images, labels)
    z = torch.cat([((noisy.update[k] - clipped.update[k]) * 4 / (2.0 * 0.5)).flatten() for k in clipped.update])
    assert z.numel() > 3000
    assert abs(float(z.std()) - 1) < 0.05 and abs(float(z.mean())) < 0.05


def test_model_made_private_by_opacus_is_the_victim(batch):
    ds, data, images, labels = batch
    spec = ModelSpec("lenet", ds.num_classes, ds.shape)
    torch.manual_seed(0)
    model = build_model(spec)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    private, _, _ = opacus.PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
        noise_multiplier=1.1, max_grad_norm=1.0, poisson_sampling=False)
    assert isinstance(private, opacus.GradSampleModule)
    client = OpacusClient(private, spec, data, dp=DPSGD(1.0, 1.1), protocol="fedavg", local_steps=3,
                          local_lr=0.1, seed=0)
    obs = client.share(images, labels)
    assert list(obs.parameters) == [n for n, _ in model.named_parameters()]  # no "_module." prefix
    assert obs.defenses == ["dpsgd:C=1,sigma=1.1"] and obs.extras["dp_backend"].startswith("opacus")
    own = own_epsilon(1.1, 1.0, 3, 1e-5)
    assert obs.extras["dp_epsilon"] == pytest.approx(own)
    assert obs.extras["opacus_epsilon"]["rdp"] == pytest.approx(own, rel=1e-3)
    assert 0 < obs.extras["opacus_epsilon"]["prv"] <= obs.extras["opacus_epsilon"]["rdp"] * 1.01
    rec = build_attack("dlg", iterations=1).reconstruct(obs)  # the attack rebuilds it from the spec
    assert rec.images.shape == images.shape
    with pytest.raises(ConfigError, match="BatchNorm"):
        OpacusClient(build_model(ModelSpec("convnet", 8, (3, 16, 16), {"width": 4})),
                     ModelSpec("convnet", 8, (3, 16, 16), {"width": 4}), data, dp=DPSGD(1.0, 1.0))


def test_opacus_epsilon_edges():
    assert opacus_epsilon(0.0, 1.0, 1, 1e-5) == math.inf
    assert opacus_epsilon(1.0, 1.0, 0, 1e-5) == 0.0
    with pytest.raises(ConfigError, match="unknown Opacus accountant 'gdp'"):
        opacus_epsilon(1.0, 1.0, 1, 1e-5, accountant="gdp")
    with pytest.raises(ConfigError, match="PRV accountant is not run"):  # would need GBs (see PRV_MIN_NOISE)
        opacus_epsilon(0.001, 1.0, 1, 1e-5, accountant="prv")


def test_tiny_noise_records_rdp_and_explains_missing_prv(batch):
    ds, data, images, labels = batch
    spec = ModelSpec("lenet", ds.num_classes, ds.shape)
    obs = OpacusClient(build_model(spec), spec, data, dp=DPSGD(1.0, 0.001)).share(images, labels)
    assert obs.extras["opacus_epsilon"]["prv"] is None and "PRV" in obs.extras["opacus_epsilon_notes"]["prv"]
    assert obs.extras["opacus_epsilon"]["rdp"] == pytest.approx(own_epsilon(0.001, 1.0, 1, 1e-5), rel=1e-3)
