"""Generative priors: generator shapes, checkpoints, the four presets, GIAS's vmap, the held-out protocol."""

import sys

import pytest
import torch

from gradaudit.attacks import build_attack
from gradaudit.attacks.priors import (DCGAN, CheckpointError, DeepImagePrior, Provenance, calibrate_batchnorm,
                                      check_held_out, load_generator, read_generator_meta, save_generator)
from gradaudit.attacks.priors import parameterization as P
from gradaudit.config import load_config
from gradaudit.errors import ConfigError
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

DATA = DataSpec("t", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory, single_thread):
    torch.manual_seed(0)
    G = calibrate_batchnorm(DCGAN(latent_dim=8, channels=3, image_size=16, width=4))
    path = tmp_path_factory.mktemp("prior") / "tiny"
    save_generator(path, G, provenance=Provenance("embedded", "train", list(range(48))), steps=7)
    return path, G


@pytest.fixture(scope="module")
def obs(single_thread):
    torch.manual_seed(1)
    spec = ModelSpec("lenet", 10, (3, 16, 16))
    return Client(build_model(spec), spec, DATA, knowledge=ServerKnowledge(labels=True)).share(
        torch.rand(2, 3, 16, 16), torch.tensor([1, 4]))


@pytest.mark.parametrize("channels,size,side", [(1, 28, 32), (3, 32, 32), (3, 20, 24)])
def test_dcgan_shapes_and_range(channels, size, side):
    G = DCGAN(latent_dim=100, channels=channels, image_size=size, width=4)
    x = G(torch.randn(3, 100) * 5)
    assert x.shape == (3, channels, size, size) and G.base * 8 == side
    assert x.min() >= -1 and x.max() <= 1
    widths = [m.out_channels for m in G.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert widths == [32, 16, 8, 4]  # 8w-4w-2w-w: 512-256-128-64 at the reference width 64


def test_dip_shape_and_fixed_input():
    net = DeepImagePrior(channels=1, image_size=28)
    noise = net.random_input(2, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (2, 16, 28, 28) and 0 <= noise.min() and noise.max() < 0.1
    assert net(noise).shape == (2, 1, 28, 28)


def test_checkpoint_round_trip_and_tamper_refusal(tiny_prior, tmp_path):
    path, G = tiny_prior
    loaded = load_generator(path)
    z = torch.randn(4, 8)
    torch.testing.assert_close(loaded.module(z), G.eval()(z))
    meta = loaded.meta
    assert meta["image_shape"] == [3, 16, 16] and meta["latent_dim"] == 8 and meta["training_steps"] == 7
    assert meta["training"]["train_indices"] == [[0, 48]] and meta["training"]["dataset"] == "embedded"
    raw = bytearray(path.with_suffix(".safetensors").read_bytes())
    raw[-3] ^= 0xFF
    bad = tmp_path / "bad"
    bad.with_suffix(".safetensors").write_bytes(bytes(raw))
    bad.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match="checksum"):
        load_generator(bad)


@pytest.mark.parametrize("name", ["gi-z", "gi-w", "gias", "dip"])
def test_presets_reduce_the_matching_loss(name, tiny_prior, obs):
    path, _ = tiny_prior
    lr = {"gi-z": 0.1, "gi-w": 0.01, "gias": 0.01, "dip": 0.01}[name]
    rec = build_attack(name, generator=str(path), iterations=16, latent_iterations=8, lr=lr,
                       schedule="none").reconstruct(obs)
    assert rec.images.shape == (2, 3, 16, 16) and 0 <= rec.images.min() and rec.images.max() <= 1
    assert rec.matching_loss < 0.95 * rec.history[0][1], rec.history
    assert rec.labels.tolist() == [1, 4]


def test_gias_needs_a_generator_and_checks_its_shape(tiny_prior):
    with pytest.raises(ConfigError, match="needs a generator"):
        build_attack("gias")
    spec = ModelSpec("lenet", 10, (1, 16, 16))
    one = Client(build_model(spec), spec, DataSpec("t", (0.5,), (0.5,))).share(torch.rand(1, 1, 16, 16),
                                                                                torch.tensor([0]))
    with pytest.raises(ConfigError, match="shape"):
        build_attack("gi-z", generator=str(tiny_prior[0]), iterations=1).reconstruct(one)


def test_gias_vmapped_copies_equal_a_loop_over_images(tiny_prior):
    import copy

    G = copy.deepcopy(tiny_prior[1]).double()  # float64: equal up to rounding, not float32 summation order
    norm = lambda g: (g - 0.5) / 0.25  # noqa: E731
    z = torch.randn(1, 3, 8, dtype=torch.float64)
    param = P.gias(G, z, norm)
    torch.manual_seed(3)  # give every image's copy different weights
    theta = {k: (v[0] + 0.05 * torch.randn_like(v[0])).requires_grad_(True) for k, v in param.theta.items()}
    const = {"z": z[0]}
    a = param.render(theta, const)
    b = P.gias_loop_render(G, norm)(theta, const)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    ga = torch.autograd.grad((a ** 2).sum(), list(theta.values()), retain_graph=True)
    gb = torch.autograd.grad((b ** 2).sum(), list(theta.values()))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-8)
    # image i depends on copy i only
    g0 = torch.autograd.grad(a[0].sum(), list(theta.values()))
    assert all(float(g[1:].abs().max()) == 0 for g in g0)


def test_z_norm_refused_without_a_latent():
    with pytest.raises(ConfigError, match="z-norm"):
        build_attack("inverting-gradients", regularizers={"z-norm": 1e-3})


def test_held_out_refusal(tiny_prior):
    meta = read_generator_meta(tiny_prior[0])
    with pytest.raises(ConfigError, match="evaluation image 3"):
        check_held_out(meta, "embedded", [50, 3])
    with pytest.raises(ConfigError):  # embedded's splits are the same images
        check_held_out(meta, "embedded", [47], split="test")
    check_held_out(meta, "embedded", [48, 63])
    check_held_out(meta, "cifar10", [3])
    check_held_out(meta, "embedded", [3], allow_train_overlap=True)
    fm = {"training": Provenance("fashion-mnist", "train", range(60000)).to_dict()}
    check_held_out(fm, "fashion-mnist", [3], split="test")
    with pytest.raises(ConfigError):
        check_held_out(fm, "fashion-mnist", [59999], split="train")
    with pytest.raises(ConfigError, match="records no training data"):
        check_held_out({"training": None}, "embedded", [60])


def test_held_out_follows_the_datasets_declarations(tiny_prior):
    """lfw's train and test splits are the same 200 images: a prior trained on lfw/train has seen lfw/test (the
    split names alone used to let it through); embedded crops of one photo share a source group."""
    from gradaudit.data import load_dataset

    lfw = {"training": Provenance("lfw", "train", range(0, 100)).to_dict()}
    with pytest.raises(ConfigError, match="evaluation image 7"):
        check_held_out(lfw, "lfw", [7], split="test")
    check_held_out(lfw, "lfw", [150], split="test")
    labels = load_dataset("embedded").labels  # 8 crops per photo: index 47 is photo 5, 48 photo 6
    meta = read_generator_meta(tiny_prior[0])  # trained on 0:48 = photos 0-5
    check_held_out(meta, "embedded", [48, 63], labels=labels)
    partial = {"training": Provenance("embedded", "train", range(0, 44)).to_dict()}  # photo 5 half seen
    with pytest.raises(ConfigError, match="same source as evaluation image 45"):
        check_held_out(partial, "embedded", [45], labels=labels)
    check_held_out(partial, "embedded", [45], labels=labels, allow_train_overlap=True)


def test_evaluation_cell_refuses_a_prior_trained_on_the_batch(tiny_prior):
    from gradaudit.evaluation.cell import prepare

    base = ["data.name=embedded", "attack.preset=gias", f"attack.params.generator={tiny_prior[0]}"]
    with pytest.raises(ConfigError, match="trained on evaluation image 5"):
        prepare(load_config(overrides=base + ["data.indices=[5]"]))
    prepare(load_config(overrides=base + ["data.indices=[52]"]))
    prepare(load_config(overrides=base + ["data.indices=[5]", "attack.params.allow_train_overlap=true"]))


def test_module_factory_generator_needs_force(tmp_path, monkeypatch, obs):
    from gradaudit.attacks.priors import check_attack_held_out

    (tmp_path / "my_prior_mod.py").write_text(
        "import torch\nfrom gradaudit.attacks.priors import DCGAN, calibrate_batchnorm\n"
        "def make():\n    torch.manual_seed(0)\n    return calibrate_batchnorm(DCGAN(8, 3, 16, 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="names Python code.*--trust-model-code"):  # code needs trust
        build_attack("gi-z", generator="my_prior_mod:make", iterations=2)
    assert "my_prior_mod" not in sys.modules  # refused before any import
    attack = build_attack("gi-z", generator="my_prior_mod:make", iterations=2, trust_code=True)
    assert attack.reconstruct(obs).images.shape == (2, 3, 16, 16)
    with pytest.raises(ConfigError, match="records no training data"):
        check_attack_held_out(attack, "embedded", [60])
    forced = build_attack("gi-z", generator="my_prior_mod:make", allow_train_overlap=True, trust_code=True)
    check_attack_held_out(forced, "embedded", [60])


@pytest.fixture(scope="module")
def trained_prior(tmp_path_factory, single_thread):
    """A tiny DCGAN trained for 300 steps on crops of 6 of the 8 embedded photos (photos 6 and 7 held out)."""
    from gradaudit.attacks.priors.training import TrainConfig, train_dcgan

    cfg = TrainConfig(dataset="embedded", exclude_labels=[6, 7], photo_crops=True, steps=300, batch_size=32,
                      width=8, image_size=16, sample_every=1000, checkpoint_every=1000)
    return train_dcgan(cfg, tmp_path_factory.mktemp("trained-prior"), resume=False)["generator"]


@pytest.mark.parametrize("preset", ["gi-z", "gi-w", "gias", "dip"])
def test_prior_presets_rebuild_a_held_out_image(preset, trained_prior):
    """Quality floors: on a held-out photo every prior preset ends at least 1 dB above where it started (its
    own rendering before any step), and the deep image prior above the image's mean-colour baseline (11.98 dB
    for image 56 at 16x16; a grey image scores 10.7): an attack that stopped using the gradient would fail."""
    from gradaudit.evaluation.cell import run_attack

    base = ["data.image_size=16", "model.name=lenet", f"attack.preset={preset}", "data.indices=[56]",
            "threat.labels_known=true", "attack.latent_iterations=40"]
    if preset != "dip":
        base.append(f"attack.generator={trained_prior}")
    start = run_attack(load_config(None, base + ["attack.iterations=0", "attack.latent_iterations=0"]))
    end = run_attack(load_config(None, base + ["attack.iterations=60"]))
    assert end.scores.mean_psnr >= start.scores.mean_psnr + 1.0, (start.scores.mean_psnr, end.scores.mean_psnr)
    if preset == "dip":
        assert end.scores.mean_psnr >= 13.5
