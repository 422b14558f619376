"""Pixel-space image similarity: MSE, RMSE, PSNR and SSIM.

All functions take two batches of images ``x`` (e.g. a reconstruction) and ``y`` (the ground truth) as
floating-point tensors of shape ``[B, C, H, W]`` with values in ``[0, data_range]`` (``[0, 1]`` by default)
and return one value per image, a tensor of shape ``[B]``. Computation is done in float64 (SSIM's variance
terms ``E[x^2] - E[x]^2`` lose precision in float32 on smooth images); the result has the inputs' floating
dtype. Neither function aligns the batch: use :func:`gradaudit.metrics.match_to_truth` first when the order
of the reconstruction is arbitrary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gradaudit.errors import ConfigError

#: MSE values are clamped to at least this before taking the logarithm, so that identical images get a
#: finite PSNR of ``10 * log10(data_range**2 / MSE_FLOOR)`` = 100 dB for ``data_range = 1``.
MSE_FLOOR = 1e-10


def _check_pair(x: Tensor, y: Tensor, what: str) -> None:
    """Raise ConfigError unless ``x`` and ``y`` are floating tensors of one shape ``[B, C, H, W]``."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise ConfigError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(x.shape) != tuple(y.shape):
        raise ConfigError(f"{what}: shape mismatch, x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}")
    if x.dim() != 4:
        raise ConfigError(f"{what}: expected images of shape [B, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ConfigError(f"{what}: empty batch (shape {tuple(x.shape)})")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ConfigError(f"{what}: expected floating-point images in [0, data_range], got {x.dtype} and {y.dtype}")


def _check_range(data_range: float, what: str) -> float:
    data_range = float(data_range)
    if not math.isfinite(data_range) or data_range <= 0:
        raise ConfigError(f"{what}: data_range must be a positive finite number, got {data_range}")
    return data_range


def _out_dtype(x: Tensor, y: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, y.dtype)


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image: ``MSE_b = 1/(C*H*W) * sum_{c,h,w} (x_bchw - y_bchw)^2``. Shape ``[B]``."""
    _check_pair(x, y, "mse")
    d = x.to(torch.float64) - y.to(torch.float64)
    return d.square().flatten(1).mean(dim=1).to(_out_dtype(x, y))


def rmse(x: Tensor, y: Tensor) -> Tensor:
    """Root mean squared error per image: ``sqrt(MSE_b)``. Shape ``[B]``."""
    return mse(x, y).sqrt()


def _psnr_from_mse(m: Tensor, data_range: float) -> Tensor:
    m = m.to(torch.float64).clamp_min(MSE_FLOOR)
    return 10.0 * torch.log10(data_range**2 / m)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image in dB: ``PSNR_b = 10 * log10(data_range^2 / MSE_b)``.

    The MSE is clamped to at least :data:`MSE_FLOOR` (1e-10) so identical images give a finite value: at most
    ``10 * log10(data_range^2) + 100`` dB, i.e. 100 dB for ``data_range = 1``. Shape ``[B]``.
    """
    data_range = _check_range(data_range, "psnr")
    _check_pair(x, y, "psnr")
    return _psnr_from_mse(mse(x, y), data_range).to(_out_dtype(x, y))


def batch_psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR of the batch-mean MSE (a 0-d tensor, dB): ``10 * log10(data_range^2 / mean_b MSE_b)``.

    This is not the mean of the per-image PSNRs: one badly reconstructed image pulls it down more. The MSE is
    clamped at :data:`MSE_FLOOR` as in :func:`psnr`.
    """
    data_range = _check_range(data_range, "batch_psnr")
    _check_pair(x, y, "batch_psnr")
    return _psnr_from_mse(mse(x, y).to(torch.float64).mean(), data_range).to(_out_dtype(x, y))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred on the middle one (float64, sums to 1)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity index per image (Wang, Bovik, Sheikh and Simoncelli 2004, IEEE TIP 13(4)).

    With a normalised ``window_size x window_size`` Gaussian window ``w`` (standard deviation ``sigma``) the
    local statistics at each pixel are ``mu_x = w * x``, ``sigma_x^2 = w * x^2 - mu_x^2``,
    ``sigma_xy = w * (x y) - mu_x mu_y`` (population, not sample, covariance), and the SSIM map is::

        SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))

    with ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` and ``L = data_range``. The map is averaged over the valid region
    (positions where the window lies fully inside the image, no padding) and then over channels. Defaults
    (11x11, sigma 1.5, K1 0.01, K2 0.03) are those of the paper; they agree with
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.

    Vectorised over the batch with a separable depthwise ``conv2d``. Returns a tensor of shape ``[B]``; 1 for
    identical images. Images must be at least ``window_size`` pixels on each side.
    """
    data_range = _check_range(data_range, "ssim")
    _check_pair(x, y, "ssim")
    if window_size < 1 or window_size % 2 == 0:
        raise ConfigError(f"ssim: window_size must be a positive odd integer, got {window_size}")
    b, c, h, w = x.shape
    if h < window_size or w < window_size:
        raise ConfigError(f"ssim: images of {h}x{w} pixels are smaller than the {window_size}x{window_size} window")
    out_dtype = _out_dtype(x, y)
    xd = x.to(torch.float64).reshape(b * c, 1, h, w)
    yd = y.to(torch.float64).reshape(b * c, 1, h, w)
    # Filter the five needed images in one go: [x, y, x^2, y^2, xy] as channels, depthwise.
    stack = torch.cat([xd, yd, xd * xd, yd * yd, xd * yd], dim=1)
    g = gaussian_window(window_size, sigma).to(device=stack.device)
    gh = g.view(1, 1, window_size, 1).expand(5, 1, window_size, 1)
    gw = g.view(1, 1, 1, window_size).expand(5, 1, 1, window_size)
    filt = F.conv2d(F.conv2d(stack, gh, groups=5), gw, groups=5)
    mu_x, mu_y, e_xx, e_yy, e_xy = filt.unbind(dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    ssim_map = num / den
    per_channel = ssim_map.reshape(b, c, -1).mean(dim=2)
    return per_channel.mean(dim=1).to(out_dtype)
