"""The seed-002 combined attack (feature-matching): its feature terms, and that matching the recovered features
moves the candidate's features toward the private ones."""

from __future__ import annotations

import pytest
import torch

from gradaudit.attacks import build_attack
from gradaudit.attacks.features.feature_matching import (FeatureMatchingAttack, cosine_squared_matching,
                                                         orthonormal_basis, subspace_residual)
from gradaudit.attacks.features.tensor import feature_reconstruction_error
from gradaudit.data import load_dataset
from gradaudit.errors import ConfigError
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge


@pytest.fixture(autouse=True, scope="module")
def _single_thread(single_thread):
    yield


def test_cosine_squared_matching_is_zero_at_the_truth_up_to_sign_scale_and_order():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 12, generator=g)
    shuffled = (h * torch.tensor([-2.0, 1.0, 3.0, -0.5, 1.0])[:, None])[torch.tensor([3, 0, 4, 1, 2])]
    assert float(cosine_squared_matching(h, shuffled)) == pytest.approx(0.0, abs=1e-6)
    # two candidates on the same target leave another target uncovered: the symmetric term sees it
    collapsed = torch.stack([h[0], h[0], h[2], h[3], h[4]])
    assert float(cosine_squared_matching(collapsed, h)) > 0.05
    assert float(cosine_squared_matching(torch.randn(5, 12, generator=g), h)) > 0.3


def test_subspace_residual_is_zero_inside_the_span_and_one_orthogonal_to_it():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 10, generator=g)
    Q = orthonormal_basis(feats)
    assert Q.shape == (10, 3)
    inside = torch.randn(4, 3, generator=g) @ feats
    assert float(subspace_residual(inside, Q)) == pytest.approx(0.0, abs=1e-5)
    outside = torch.randn(4, 10, generator=g)
    outside = outside - (outside @ Q) @ Q.T
    assert float(subspace_residual(outside, Q)) == pytest.approx(1.0, abs=1e-5)


def _observation(B=2, seed=0):
    ds = load_dataset("embedded", image_size=16)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:B].tolist()
    images, labels = ds.batch(idx)
    spec = ModelSpec("wide-head", ds.num_classes, ds.shape, {"backbone": "lenet", "width": 512})
    torch.manual_seed(0)
    model = build_model(spec)
    obs = Client(model, spec, DataSpec(ds.name, ds.mean, ds.std), knowledge=ServerKnowledge(labels=True)).share(
        images, labels)
    with torch.no_grad():
        truth = model.features(ds.normalize(images))
    return obs, images, truth, model, ds


@pytest.mark.parametrize("loss", ["cosine-squared", "subspace"])
def test_feature_term_pulls_the_candidate_features_to_the_recovered_ones(loss):
    obs, images, truth, model, ds = _observation()
    common = dict(iterations=40, parameterization="pixels", lr=0.05, signed=True, tv=0.0, seed=0)
    with_term = FeatureMatchingAttack(feature_weight=10.0, feature_loss=loss, **common).reconstruct(obs)
    without = FeatureMatchingAttack(feature_weight=0.0, **common).reconstruct(obs)

    def feature_error(rec):
        with torch.no_grad():
            h = model.features(ds.normalize(rec.images))
        return feature_reconstruction_error(truth, h)

    assert with_term.features.shape == truth.shape
    assert with_term.config["feature_loss"] == loss and with_term.config["feature_layer"] == "wide"
    assert feature_error(with_term) < 0.8 * feature_error(without)


def test_registered_with_a_deep_image_prior_by_default_and_validated():
    obs, images, *_ = _observation()
    attack = build_attack("feature-matching", iterations=3)
    assert isinstance(attack, FeatureMatchingAttack) and attack.config.parameterization == "dip"
    assert attack.config.distance == "reweighted-cosine"
    rec = attack.reconstruct(obs)
    assert rec.images.shape == images.shape and 0 <= float(rec.images.min()) <= float(rec.images.max()) <= 1
    assert rec.config["feature_loss"] == "cosine-squared"  # B=2 <= subspace_above
    with pytest.raises(ConfigError, match="feature loss"):
        FeatureMatchingAttack(feature_loss="l1")
    with pytest.raises(ConfigError, match="no hyper-parameter 'bogus'"):
        build_attack("feature-matching", bogus=1)
    plain = Client(build_model(ModelSpec("lenet", 8, (3, 16, 16))), ModelSpec("lenet", 8, (3, 16, 16)),
                   DataSpec("embedded", obs.data.mean, obs.data.std)).share(images, torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="wide-head"):
        build_attack("feature-matching", iterations=1).reconstruct(plain)
