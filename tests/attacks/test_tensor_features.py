"""Tensor-based feature reconstruction (Wang, Lee, Lei 2023) on synthetic two-layer heads.

Synthetic client (:func:`synthetic_two_layer`): unit-norm Gaussian features h_i in R^d, w_j ~ N(0, I),
a_j = +-1/m, targets +-1, square loss, so the residuals r_i ~ -y_i (and the weights c_i of the moments) have
both signs. Two errors: ``span`` is seed 002's metric (:func:`feature_reconstruction_error`), ``match`` the
per-feature one (:func:`feature_matching_error`, the sine to the matched reconstruction). Measured, d = 20,
mean over seeds 0-3:

    per-feature error, no noise     m=1000   m=4000   m=16000
    B=2                              0.064    0.048    0.015
    B=4                              0.160    0.092    0.030
    B=8                              0.358    0.196    0.107

    span error, B=4, gradient noise (std x rms)   0      0.1     0.3     1.0
    m=1000                                        0.000  0.006   0.020   0.079
    m=4000                                        0.000  0.004   0.011   0.043
    m=16000                                       0.000  0.002   0.005   0.024

d=20, B=4, m=5000: span error 2e-8, per-feature error 0.065. Without noise every g_j is a combination of the
h_i, so the recovered span is exact and seed 002's span metric is ~1e-8 whatever B and m: the tensor step's
error shows in the per-feature error, which grows with B and shrinks with m. With gradient noise the span
metric grows with the noise and shrinks with m.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from gradaudit.attacks.features.tensor import (feature_cosine_similarity, feature_matching_error,
                                               feature_reconstruction_error, reconstruct_features,
                                               synthetic_two_layer, two_layer_gradients)
from gradaudit.errors import ConfigError

SEEDS = range(4)


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def _errors(d, batch, width, noise=0.0, **kwargs):
    span, match = [], []
    for seed in SEEDS:
        obs = synthetic_two_layer(d, batch, width, seed=seed, noise=noise)
        rec = reconstruct_features(obs["weights"], obs["gradients"], obs["head"], batch, seed=seed, **kwargs)
        span.append(feature_reconstruction_error(obs["features"], rec.features))
        match.append(feature_matching_error(obs["features"], rec.features))
    return statistics.mean(span), statistics.mean(match)


def test_metric_is_the_projection_onto_the_complement_of_the_span():
    e = torch.eye(4, dtype=torch.float64)
    assert feature_reconstruction_error(e[:2], e[:2]) == pytest.approx(0.0, abs=1e-12)
    assert feature_reconstruction_error(e[:2], torch.stack([e[0] + e[1], e[0] - e[1]])) == pytest.approx(0, abs=1e-12)
    assert feature_reconstruction_error(e[:2], e[2:]) == pytest.approx(1.0)
    # half of the true features outside the span: mean of 0 and 1
    assert feature_reconstruction_error(e[:2], e[:1]) == pytest.approx(0.5)
    # a 45 degree tilt: residual sin 45
    tilt = (e[0] + e[2]) / 2 ** 0.5
    assert feature_reconstruction_error(e[:1], tilt[None]) == pytest.approx(2 ** -0.5)
    # near-duplicates do not add span; sign and scale do not matter
    assert feature_reconstruction_error(e[:2], torch.stack([-3 * e[0], e[0]])) == pytest.approx(0.5)
    # the per-feature versions see through a rotation inside the right span
    assert feature_matching_error(e[:2], torch.stack([e[0] + e[1], e[0] - e[1]])) == pytest.approx(2 ** -0.5)
    assert feature_cosine_similarity(e[:2], torch.stack([e[1], -2 * e[0]])) == pytest.approx(1.0)


def test_synthetic_gradients_are_the_autograd_gradients():
    obs = synthetic_two_layer(6, 3, 50, seed=1)
    w = obs["weights"].clone().requires_grad_(True)
    out = torch.relu(obs["features"] @ w.T) @ obs["head"]
    (0.5 * (out - obs["targets"]) ** 2).mean().backward()
    assert torch.allclose(w.grad, two_layer_gradients(obs["features"], obs["weights"], obs["head"], obs["targets"]))


def test_features_are_recovered_for_d20_b4_m5000():
    span, match = _errors(20, 4, 5000)
    print(f"tensor d=20 B=4 m=5000: span error {span:.2e}, per-feature error {match:.3f}")
    assert span < 1e-6          # the span is exact without noise
    assert match < 0.15         # measured 0.065; |cos| ~ 0.998
    obs = synthetic_two_layer(20, 4, 5000, seed=0)
    rec = reconstruct_features(obs["weights"], obs["gradients"], obs["head"], 4)
    assert rec.features.shape == (4, 20)
    assert torch.allclose(rec.features.norm(dim=1), torch.ones(4))
    assert feature_cosine_similarity(obs["features"], rec.features) > 0.97
    # mixed-sign residuals: the moment's top eigenvalues have both signs, and the method still works
    assert 0 < rec.config["negative_eigenvalues"] < 4


def test_error_grows_with_batch_and_shrinks_with_width():
    table = {(b, m): _errors(20, b, m)[1] for b in (2, 4, 8) for m in (1000, 4000, 16000)}
    print("tensor per-feature error, d=20 (rows B, columns m = 1000, 4000, 16000):")
    for b in (2, 4, 8):
        print(f"  B={b}: " + "  ".join(f"{table[b, m]:.3f}" for m in (1000, 4000, 16000)))
    for m in (1000, 4000, 16000):
        assert table[2, m] < table[4, m] < table[8, m]
    for b in (2, 4, 8):
        assert table[b, 1000] > table[b, 4000] > table[b, 16000]


def test_seed_metric_grows_with_noise_and_shrinks_with_width():
    table = {(s, m): _errors(20, 4, m, noise=s)[0] for s in (0.0, 0.1, 0.3, 1.0) for m in (1000, 4000)}
    print("tensor span error (seed 002), d=20 B=4 (rows noise, columns m = 1000, 4000):")
    for s in (0.0, 0.1, 0.3, 1.0):
        print(f"  noise={s}: " + "  ".join(f"{table[s, m]:.3f}" for m in (1000, 4000)))
    for m in (1000, 4000):
        assert table[0.0, m] < table[0.1, m] < table[0.3, m] < table[1.0, m]
    for s in (0.1, 0.3, 1.0):
        assert table[s, 1000] > table[s, 4000]


def test_moment_subspace_and_matrix_free_path_agree():
    obs = synthetic_two_layer(20, 4, 5000, seed=0)
    dense = reconstruct_features(obs["weights"], obs["gradients"], obs["head"], 4, subspace="moment")
    free = reconstruct_features(obs["weights"], obs["gradients"], obs["head"], 4, subspace="moment", dense_limit=0)
    assert feature_reconstruction_error(dense.subspace.T, free.subspace.T) < 1e-4
    assert feature_reconstruction_error(obs["features"], dense.features) < 0.1


def test_bad_inputs_are_config_errors():
    obs = synthetic_two_layer(5, 2, 100, seed=0)
    with pytest.raises(ConfigError, match="B <= d"):
        reconstruct_features(obs["weights"], obs["gradients"], obs["head"], 6)
    with pytest.raises(ConfigError, match="subspace"):
        reconstruct_features(obs["weights"], obs["gradients"], obs["head"], 2, subspace="pca")
    with pytest.raises(ConfigError, match="weights and gradients"):
        reconstruct_features(obs["weights"], obs["gradients"][:, :3], obs["head"], 2)
