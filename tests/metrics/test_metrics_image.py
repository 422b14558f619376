"""PSNR/MSE against known values, SSIM against scikit-image's reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from gradaudit.errors import ConfigError
from gradaudit.metrics import MSE_FLOOR, batch_psnr, mse, psnr, rmse, ssim


def skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return np.array(
        [
            structural_similarity(
                a.numpy().astype(np.float64),
                b.numpy().astype(np.float64),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=0,
            )
            for a, b in zip(x, y)
        ]
    )


def smooth_images(b: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Low-frequency images: sums of a few random sinusoids, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = torch.zeros(b, c, h, w)
    for _ in range(3):
        fx, fy, ph = (torch.rand(b, c, 1, 1, generator=g) * 3 for _ in range(3))
        out += torch.sin(2 * math.pi * (fx * xx + fy * yy) + ph)
    return (out - out.amin((2, 3), keepdim=True)) / (out.amax((2, 3), keepdim=True) - out.amin((2, 3), keepdim=True))


def test_mse_rmse_psnr_known_values():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, 1, 4, 4)
    y[0] = 0.1  # MSE 0.01 -> PSNR 20 dB
    y[1, 0, 0, :] = 1.0  # 4 of 16 pixels off by 1 -> MSE 0.25 -> PSNR 10*log10(4)
    torch.testing.assert_close(mse(x, y), torch.tensor([0.01, 0.25]))
    torch.testing.assert_close(rmse(x, y), torch.tensor([0.1, 0.5]))
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, 10 * math.log10(4.0)]))
    # batch PSNR uses the batch-mean MSE (0.13), not the mean PSNR
    torch.testing.assert_close(batch_psnr(x, y), torch.tensor(10 * math.log10(1 / 0.13)))
    # data_range scales the peak: same MSE, range 255 -> +20*log10(255)
    torch.testing.assert_close(psnr(x, y, data_range=255.0)[0], torch.tensor(20.0 + 20 * math.log10(255.0)))


def test_psnr_identical_images_is_capped_at_100_db():
    x = torch.rand(3, 3, 8, 8)
    assert MSE_FLOOR == 1e-10
    torch.testing.assert_close(psnr(x, x.clone()), torch.full((3,), 100.0))
    assert torch.isfinite(batch_psnr(x, x))


def test_psnr_is_per_image():
    x = torch.rand(2, 3, 16, 16)
    y = x.clone()
    y[1] = (y[1] + 0.2).clamp(0, 1)
    p = psnr(x, y)
    assert p[0] == 100.0 and p[1] < 30.0


@pytest.mark.parametrize("size", [32, 28])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["random", "smooth", "noisy-copy"])
def test_ssim_matches_skimage(size, channels, kind):
    g = torch.Generator().manual_seed(size * 10 + channels)
    if kind == "random":
        x = torch.rand(4, channels, size, size, generator=g)
        y = torch.rand(4, channels, size, size, generator=g)
    elif kind == "smooth":
        x = smooth_images(4, channels, size, size, seed=1)
        y = smooth_images(4, channels, size, size, seed=2)
    else:
        x = smooth_images(4, channels, size, size, seed=3)
        y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ours = ssim(x, y).numpy()
    ref = skimage_ssim(x, y)
    assert ours.shape == (4,)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # and the values are not all trivially equal
    assert np.ptp(ref) > 0 or kind == "random"


def test_ssim_identical_is_one_and_symmetric():
    x = torch.rand(3, 3, 32, 32)
    y = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(ssim(x, x), torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(ssim(x, y), ssim(y, x))
    assert (ssim(x, y) < 0.2).all()


def test_ssim_detects_a_single_changed_image_in_batch():
    x = smooth_images(3, 3, 32, 32, seed=4)
    y = x.clone()
    y[2] = 1 - y[2]
    s = ssim(x, y)
    assert s[0] > 0.9999 and s[1] > 0.9999 and s[2] < 0.5


@pytest.mark.parametrize("fn", [mse, rmse, psnr, batch_psnr, ssim])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ConfigError, match=r"\(2, 3, 32, 32\).*\(2, 1, 32, 32\)"):
        fn(torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32))


def test_bad_inputs():
    with pytest.raises(ConfigError):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))  # smaller than the 11x11 window
    with pytest.raises(ConfigError):
        mse(torch.rand(3, 32, 32), torch.rand(3, 32, 32))  # not [B, C, H, W]
    with pytest.raises(ConfigError):
        psnr(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), data_range=0)
