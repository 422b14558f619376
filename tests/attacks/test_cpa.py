"""Cocktail Party Attack on the MLP's first layer.

Measured on this CPU (embedded photos 32x32, MLP width 256 built with seed 0, FedSGD, defaults: Adam lr 0.01,
1500 iterations, decor 1e-3, T 5, tv 0.01, box 1, bias scaling; 5-13 s per run on the shared 2-core machine;
benchmarks/analytic_attacks.py):

    batch seed                       0      1      2
    PSNR >= 15 dB                  0.50   0.41   0.41
    PSNR >= 15 dB or SSIM >= 0.5   0.56   0.56   0.47
    median PSNR (dB)               14.9   14.4   14.1
    best PSNR (dB)                 28.4   33.4   24.2

With the mixing refinement (default 30 steps, ridge 1; ours, see cpa.py): 0.91 / 0.94 / 1.00 at PSNR >= 15 dB,
median 19.1 / 23.5 / 21.7 dB (batch seeds 3-5: 0.88 / 0.88 / 1.00; labels unknown: 0.84 / 0.91 / 0.88).

On batch 0 the paper's objective alone (negentropy + decorrelation 1.0, no TV, no box; same budget) gets 0.09,
and min-max ("range") scaling instead of the bias 0.25. The unmixing alone misses the brief's >= 70%: the 64
images are 8 crops of each of 8 photos, so a batch of 32 holds strongly correlated sources (|corr| up to 0.77),
which ICA's independence assumption does not cover. The refinement reaches it. Reconstructions stay
approximate, never exact. The tests assert what holds, with a margin.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from gradaudit.attacks.features.cpa import CocktailPartyAttack, negentropy, refine_mixing, whiten
from gradaudit.attacks.features.inversion import layer_input_model
from gradaudit.attacks.features.tensor import feature_matching_error
from gradaudit.attacks.registry import build_attack
from gradaudit.data import load_dataset
from gradaudit.errors import ConfigError
from gradaudit.metrics import psnr, score_reconstruction
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec


@pytest.fixture(scope="module")
def data(single_thread):
    return load_dataset("embedded")


def _observe(data, indices, model="mlp", **kwargs):
    images, labels = data.batch(indices)
    spec = ModelSpec(model, data.num_classes, data.shape, kwargs)
    torch.manual_seed(0)
    obs = Client(build_model(spec), spec, DataSpec(data.name, data.mean, data.std)).share(images, labels)
    return obs, images


@pytest.fixture(scope="module")
def batch32(data):
    idx = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:32].tolist()
    return _observe(data, idx, width=256)


def test_whitening_and_negentropy():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(40, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 500, generator=g, dtype=torch.float64)
    z, q, mu = whiten(rows, 5)
    assert torch.allclose(z @ z.T / 499, torch.eye(5, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(q @ (rows - mu), z)
    gauss = torch.randn(4, 200000, generator=g, dtype=torch.float64)
    uniform = (torch.rand(4, 200000, generator=g, dtype=torch.float64) - 0.5) * 12 ** 0.5  # unit variance
    laplace = torch.distributions.Laplace(0.0, 2 ** -0.5).sample((4, 200000)).double()
    assert float(negentropy(gauss).max()) < 1e-5
    assert float(negentropy(uniform).min()) > 3e-4 and float(negentropy(laplace).min()) > 3e-4  # ~7e-4, ~1.3e-3


def test_one_sample_is_recovered_exactly_from_the_bias(data):
    """B = 1: the gradient rows are all multiples of x, and dW / db gives sign and scale exactly."""
    obs, images = _observe(data, [5], width=256)
    rec = CocktailPartyAttack(iterations=5).reconstruct(obs)
    assert rec.config["bias_scaled"] == 1
    assert float(psnr(rec.images, images)[0]) > 60


def test_cpa_unmixes_a_batch_of_32_photos_and_the_refinement_recovers_most(batch32):
    obs, images = batch32
    rec = build_attack("cpa", refine=0).reconstruct(obs)            # the unmixing alone
    scores = score_reconstruction(rec.images, images)
    good = sum((p >= 15 or s >= 0.5) for p, s in zip(scores.psnr, scores.ssim)) / 32
    by_psnr = sum(p >= 15 for p in scores.psnr) / 32
    median = statistics.median(scores.psnr)
    print(f"CPA B=32 MLP-256: {by_psnr:.2f} at PSNR >= 15 dB, {good:.2f} at PSNR >= 15 or SSIM >= 0.5, median "
          f"{median:.1f} dB, best {max(scores.psnr):.1f} dB, {rec.seconds:.1f} s")
    assert rec.images.shape == images.shape
    assert rec.config["bias_scaled"] >= 30
    assert good >= 0.45 and by_psnr >= 0.4      # measured 0.56 and 0.50 (batch seed 0)
    assert median >= 13.5 and max(scores.psnr) >= 22
    # the default attack adds 30 steps of the mixing refinement (ridge 1) to exactly this result
    refined, residuals = refine_mixing(obs, "fc1", rec.images, obs.update["fc1.weight"].double(), 30, ridge=1.0)
    scores = score_reconstruction(refined, images)
    after = sum(p >= 15 for p in scores.psnr) / 32
    print(f"  + refinement: {after:.2f} at PSNR >= 15 dB, median {statistics.median(scores.psnr):.1f} dB, "
          f"residual {residuals[0]:.3f} -> {residuals[-1]:.3f}")
    assert after >= 0.8 and after > by_psnr + 0.3  # measured 0.91 (0.88-1.00 on batch seeds 0-5)
    assert statistics.median(scores.psnr) > median + 2 and residuals[-1] < residuals[0]


def test_cpa_needs_enough_units_and_valid_settings(data):
    obs, _ = _observe(data, list(range(20)), width=16)
    with pytest.raises(ConfigError, match="at least as many units"):
        CocktailPartyAttack().reconstruct(obs)
    obs, _ = _observe(data, list(range(10)), model="convnet", width=4, norm="none")   # fc has 8 < 10 rows
    with pytest.raises(ConfigError, match="at least as many units"):
        CocktailPartyAttack().reconstruct(obs)
    with pytest.raises(ConfigError, match="scale"):
        CocktailPartyAttack(scale="minmax")
    with pytest.raises(ConfigError, match="invert"):
        CocktailPartyAttack(invert_lr=0)


def test_conv_net_features_of_one_sample_are_exact(data):
    """B = 1 through a ConvNet: the fc gradient rows are multiples of h, and dW / db gives h exactly."""
    obs, images = _observe(data, [3], model="convnet", width=4, norm="none")
    rec = CocktailPartyAttack(iterations=5, invert_iterations=0).reconstruct(obs)
    assert rec.config["layer"] == "fc" and rec.config["target"] == "features" and rec.config["bias_scaled"] == 1
    _, feat = layer_input_model(obs, "fc")
    with torch.no_grad():
        h = feat(data.normalize(images))
    assert torch.allclose(rec.features, h, rtol=1e-3, atol=1e-5)


def test_cpa_on_a_conv_net_unmixes_features_and_inverts_them(data):
    """B = 4 through a ConvNet (norm none): unmix the fc layer's gradient, refine, then invert the features."""
    idx = [5, 17, 40, 58]
    obs, images = _observe(data, idx, model="convnet", width=16, norm="none")
    rec = CocktailPartyAttack(iterations=800, invert_iterations=150, invert_tv=0.1).reconstruct(obs)
    _, feat = layer_input_model(obs, "fc")
    with torch.no_grad():
        h = feat(data.normalize(images)).double()
    err = feature_matching_error(h, rec.features)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    scores = score_reconstruction(rec.images, images)
    grey = score_reconstruction(torch.full_like(images, 0.5), images)
    mean = statistics.mean
    print(f"CPA conv B=4: feature error {err:.2e} (random rotation in the span "
          f"{feature_matching_error(h, q @ h):.3f}); PSNR {[round(p, 1) for p in scores.psnr]} mean "
          f"{mean(scores.psnr):.1f} dB (grey image {mean(grey.psnr):.1f}); {rec.seconds:.1f} s")
    assert rec.images.shape == images.shape and rec.features.shape == (4, h.shape[1])
    assert err < 0.05          # measured 0.26 after the unmixing, ~0 after the refinement (refine=0: 0.26)
    assert rec.config["refine_residuals"][-1] < rec.config["refine_residuals"][0]
    assert mean(scores.psnr) > mean(grey.psnr) + 3        # measured 16.0 vs 11.5 dB (refine=0: 14.6)
