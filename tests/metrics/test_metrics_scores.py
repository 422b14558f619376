"""score_reconstruction: align first, clamp, then score; JSON-safe output."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from gradaudit.errors import ConfigError
from gradaudit.metrics import LPIPSMetric, ReconstructionScores, psnr, score_reconstruction, ssim


def shuffled_noisy(seed: int = 0, b: int = 6, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(b, 3, size, size, generator=g)
    shuffle = torch.randperm(b, generator=g)
    recon = (truth[shuffle] + 0.03 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    return truth, recon, shuffle


def test_scores_are_computed_on_the_aligned_batch():
    truth, recon, shuffle = shuffled_noisy()
    s = score_reconstruction(recon, truth)
    inverse = torch.argsort(shuffle)
    assert s.assignment == inverse.tolist()
    aligned = recon[inverse]
    expected_mse = ((aligned - truth) ** 2).flatten(1).double().mean(1)
    assert s.mse == pytest.approx(expected_mse.tolist(), rel=1e-6)
    assert s.rmse == pytest.approx(expected_mse.sqrt().tolist(), rel=1e-6)
    assert s.psnr == pytest.approx(psnr(aligned, truth).tolist(), rel=1e-6)
    assert s.ssim == pytest.approx(ssim(aligned, truth).tolist(), rel=1e-6)
    assert min(s.psnr) > 25  # the unaligned batch would be around 8 dB
    assert s.mean_psnr == pytest.approx(sum(s.psnr) / len(s.psnr))
    assert s.mean_ssim == pytest.approx(sum(s.ssim) / len(s.ssim))
    assert s.mean_mse == pytest.approx(float(expected_mse.mean()), rel=1e-6)
    assert s.batch_psnr == pytest.approx(10 * math.log10(1 / float(expected_mse.mean())), rel=1e-6)
    assert s.lpips is None and s.mean_lpips is None
    assert s.lpips_status == "not computed: no LPIPSMetric given"
    assert s.label_accuracy is None


def test_perfect_reconstruction():
    truth = torch.rand(4, 1, 12, 12)
    s = score_reconstruction(truth.flip(0), truth)
    assert s.assignment == [3, 2, 1, 0]
    assert s.psnr == [100.0] * 4 and s.batch_psnr == 100.0
    assert s.ssim == pytest.approx([1.0] * 4, abs=1e-6)
    assert s.mse == [0.0] * 4


def test_reconstruction_is_clamped_and_nan_safe_before_scoring():
    truth = torch.full((2, 1, 12, 12), 0.9)
    recon = torch.full((2, 1, 12, 12), 1.5)  # clamped to 1.0: MSE 0.01 -> 20 dB (unclamped: 0.36 -> 4.4 dB)
    s = score_reconstruction(recon, truth)
    assert s.psnr == pytest.approx([20.0, 20.0])
    recon[1] = float("nan")  # a diverged attack: NaN -> 0, so MSE 0.81
    s = score_reconstruction(recon, truth)
    assert sorted(s.mse) == pytest.approx([0.01, 0.81])
    json.dumps(s.to_dict(), allow_nan=False)


def test_label_accuracy_only_when_both_given():
    truth, recon, _ = shuffled_noisy(b=4)
    s = score_reconstruction(recon, truth, true_labels=[0, 1, 2, 2], predicted_labels=[2, 2, 0, 5])
    assert s.label_accuracy == 0.75
    assert score_reconstruction(recon, truth, true_labels=[0, 1, 2, 2]).label_accuracy is None


def test_lpips_status_reports_the_reason_when_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)
    truth, recon, _ = shuffled_noisy(b=2)
    s = score_reconstruction(recon, truth, lpips=LPIPSMetric())
    assert s.lpips is None and s.lpips_status == "lpips package not installed"
    assert s.to_dict()["lpips_status"] == "lpips package not installed"


def test_lpips_computed_on_aligned_batch_when_available(fake_lpips):
    truth, _, shuffle = shuffled_noisy(b=3, size=32)
    recon = truth[shuffle]  # exact copies, shuffled: aligned LPIPS must be 0 for every image
    s = score_reconstruction(recon, truth, lpips=LPIPSMetric(backbone_weights=fake_lpips.backbone_path))
    assert s.lpips_status == "ok"
    assert s.lpips == pytest.approx([0.0, 0.0, 0.0], abs=1e-7)
    assert s.mean_lpips == pytest.approx(0.0, abs=1e-7)
    (model,) = fake_lpips.instances
    torch.testing.assert_close(model.calls[-1][1], 2 * truth - 1)


def test_to_dict_is_strict_json_without_nan_or_inf():
    s = ReconstructionScores(
        mse=[0.0, 0.1], rmse=[0.0, 0.3], psnr=[math.inf, 10.0], ssim=[1.0, math.nan], lpips=None,
        batch_psnr=math.inf, assignment=[1, 0],
    )  # fmt: skip
    d = s.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert d["psnr"] == [None, 10.0] and d["ssim"] == [1.0, None]
    assert d["batch_psnr"] is None and d["mean_psnr"] is None and d["mean_ssim"] is None
    assert d["mean_mse"] == pytest.approx(0.05) and d["assignment"] == [1, 0]
    assert set(json.loads(text)) == {
        "mse", "rmse", "psnr", "ssim", "lpips", "mean_mse", "mean_rmse", "mean_psnr", "mean_ssim", "mean_lpips",
        "batch_psnr", "assignment", "label_accuracy", "lpips_status",
    }  # fmt: skip


def test_score_rejects_mismatched_batches():
    with pytest.raises(ConfigError, match=r"\(3, 3, 16, 16\).*\(4, 3, 16, 16\)"):
        score_reconstruction(torch.rand(3, 3, 16, 16), torch.rand(4, 3, 16, 16))
