"""Engine behaviour: vectorised restarts equal looped ones, the best restart is kept, configs are validated."""

import pytest
import torch

from gradaudit.attacks import build_attack
from gradaudit.attacks.matching.engine import GradientMatchingAttack, MatchingConfig
from gradaudit.errors import ConfigError
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

DATA = DataSpec("t", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def lenet_obs():
    torch.manual_seed(0)
    spec = ModelSpec("lenet", 10, (3, 16, 16))
    x = torch.rand(2, 3, 16, 16)
    return Client(build_model(spec), spec, DATA, knowledge=ServerKnowledge(labels=True)).share(x, torch.tensor([1, 4]))


def test_vectorised_restarts_equal_looped_restarts(lenet_obs):
    kw = dict(iterations=6, restarts=3, regularizers={"tv": 0.01}, signed=False, lr=0.01)
    a = GradientMatchingAttack(vectorize=True, **kw).reconstruct(lenet_obs)
    b = GradientMatchingAttack(vectorize=False, **kw).reconstruct(lenet_obs)
    torch.testing.assert_close(a.images, b.images, atol=1e-5, rtol=1e-4)
    assert a.restart_losses == pytest.approx(b.restart_losses, rel=1e-4, abs=1e-6)


def test_best_restart_is_kept(lenet_obs):
    rec = GradientMatchingAttack(iterations=5, restarts=4).reconstruct(lenet_obs)
    assert len(rec.restart_losses) == 4
    assert len(set(round(v, 8) for v in rec.restart_losses)) > 1  # restarts really differ
    assert rec.matching_loss == pytest.approx(min(rec.restart_losses))


def test_joint_labels_dlg_style(lenet_obs):
    rec = build_attack("dlg", iterations=2, labels="joint").reconstruct(lenet_obs)
    assert rec.label_source == "joint" and rec.labels.shape == (2,)


def test_given_labels_required_when_asked():
    torch.manual_seed(0)
    spec = ModelSpec("lenet", 10, (3, 16, 16))
    obs = Client(build_model(spec), spec, DATA, knowledge=ServerKnowledge(labels=False)).share(
        torch.rand(1, 3, 16, 16), torch.tensor([2]))
    with pytest.raises(ConfigError, match="labels"):
        GradientMatchingAttack(labels="given", iterations=1).reconstruct(obs)
    rec = GradientMatchingAttack(labels="auto", iterations=1).reconstruct(obs)
    assert rec.label_source == "idlg" and rec.labels.tolist() == [2]


def test_attack_output_is_in_pixel_range_and_shape(lenet_obs):
    rec = GradientMatchingAttack(iterations=3, lr=1.0, signed=True, boxed=True).reconstruct(lenet_obs)
    assert rec.images.shape == (2, 3, 16, 16)
    assert rec.images.min() >= 0 and rec.images.max() <= 1
    assert rec.history and rec.history[-1][0] == 2


def test_progress_callback_reports_every_iteration_block(lenet_obs):
    seen = []
    GradientMatchingAttack(iterations=25, log_every=10).reconstruct(lenet_obs, progress=lambda d, t, l: seen.append((d, t)))
    assert seen[0] == (1, 25) and seen[-1] == (25, 25) and len(seen) == 4


@pytest.mark.parametrize("bad", [dict(iterations=-1), dict(restarts=0), dict(lr=0.0), dict(distance="l3"),
                                 dict(regularizers={"tvv": 1.0}), dict(regularizers={"tv": -1.0}),
                                 dict(optimizer="sgd"), dict(labels="guess")])
def test_invalid_config_rejected_before_work(bad):
    with pytest.raises(ConfigError):
        MatchingConfig(**bad)


def test_bn_prior_on_model_without_bn_is_a_clear_error(lenet_obs):
    with pytest.raises(ConfigError, match="batch-norm"):
        build_attack("gradinversion", iterations=1).reconstruct(lenet_obs)
