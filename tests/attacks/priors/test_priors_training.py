"""Prior training (resume equals an uninterrupted run), GIML meta-learning, and the 'prior' / 'attack' CLI."""

import pytest
import torch

from gradaudit.attacks import build_attack
from gradaudit.attacks.priors import DCGAN, calibrate_batchnorm, load_generator
from gradaudit.attacks.priors.giml import GIMLConfig, meta_learn
from gradaudit.attacks.priors.training import TrainConfig, train_dcgan
from gradaudit.cli import main
from gradaudit.data import load_dataset
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = dict(dataset="embedded", batch_size=4, width=4, latent_dim=8, checkpoint_every=1, sample_every=2,
            exclude_labels=[2, 5])


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(path / "last.safetensors"))


def test_resume_continues_exactly_where_training_stopped(tmp_path):
    train_dcgan(TrainConfig(steps=3, **TINY), tmp_path / "straight")
    train_dcgan(TrainConfig(steps=2, **TINY), tmp_path / "split")
    summary = train_dcgan(TrainConfig(steps=3, **TINY), tmp_path / "split")  # resumes at step 2
    assert summary["steps"] == 3
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    fresh = train_dcgan(TrainConfig(steps=1, **TINY), tmp_path / "split", resume=False)
    assert fresh["steps"] == 1
    meta = load_generator(tmp_path / "straight" / "generator").meta
    assert meta["training_steps"] == 3 and meta["image_shape"] == [3, 32, 32]
    assert meta["training"]["train_indices"] == [[0, 16], [24, 40], [48, 64]]  # photos 2 and 5 held out
    assert (tmp_path / "straight" / "samples" / "step_000002.png").is_file()


def test_meta_learn_two_tasks_changes_the_generator(tmp_path):
    cfg = GIMLConfig(tasks=2, task_batch=2, latent_iterations=3, finetune_iterations=3, width=4, latent_dim=8,
                     drift_every=1, checkpoint_every=1, exclude_labels=[2, 5], seed=3)
    summary = meta_learn(cfg, tmp_path / "giml")
    assert summary["tasks"] == 2 and len(summary["losses"]) == 2
    with torch.random.fork_rng():
        torch.manual_seed(3)
        init = calibrate_batchnorm(DCGAN(8, 3, 32, 4), seed=3)
    learned = load_generator(tmp_path / "giml" / "generator")
    moved = [float((p.detach() - init.state_dict()[k]).abs().max()) for k, p in learned.module.named_parameters()]
    assert min(moved) > 0  # every tensor took Reptile steps
    # two Reptile interpolations theta += 0.5 (theta_adapted - theta): a fraction of 3 fine-tuning steps
    assert max(moved) < 0.02
    # GIAS runs with the meta-learned prior on a held-out image (photo 2)
    ds = load_dataset("embedded")
    spec = ModelSpec("lenet", ds.num_classes, ds.shape)
    x, y = ds.batch([17])
    obs = Client(build_model(spec), spec, DataSpec(ds.name, ds.mean, ds.std)).share(x, y)
    rec = build_attack("gias", generator=str(tmp_path / "giml" / "generator"), iterations=2,
                       latent_iterations=2).reconstruct(obs)
    assert rec.images.shape == (1, 3, 32, 32)


def test_cli_prior_train_and_held_out_attack(tmp_path, capsys):
    out = tmp_path / "prior"
    assert main(["prior", "train", "--data", "embedded", "--exclude-labels", "2,5", "--out", str(out), "--steps",
                 "2", "--batch-size", "4", "--width", "4", "--sample-every", "1"]) == 0
    assert (out / "generator.safetensors").is_file() and (out / "samples" / "step_000002.png").is_file()
    gen = str(out / "generator")
    common = ["attack", "--attack", "gias", "--generator", gen, "--dataset", "embedded", "--set",
              "attack.iterations=2", "--set", "attack.params.latent_iterations=2"]
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "a"), "--set", "data.indices=[0]"]) == 2
    assert "trained on evaluation image 0" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "b"), "--set", "data.indices=[0]", "--force"]) == 0
    assert main(common + ["--out", str(tmp_path / "c"), "--set", "data.indices=[20]"]) == 0
    assert (tmp_path / "c" / "grid.png").is_file()
