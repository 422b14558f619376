"""Align a reconstructed batch with the ground truth by optimal assignment.

Gradient inversion recovers a batch of images in an arbitrary order (the gradient of a mean loss is invariant
to permuting the batch), so before scoring, each reconstructed image is paired with one ground-truth image.
Pairing greedily (each truth image takes its nearest unused reconstruction) can be far from optimal; instead
we solve the linear assignment problem

    perm = argmin over permutations pi of  sum_j cost(reconstruction[pi(j)], truth[j])

exactly with the Hungarian / Kuhn-Munkres method (Kuhn 1955, Munkres 1957), as implemented by
:func:`scipy.optimize.linear_sum_assignment`, on the ``B x B`` cost matrix.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from gradaudit.errors import ConfigError, unknown_name
from gradaudit.metrics.image import _check_pair, ssim

COSTS = ("mse", "ssim")

#: Pairwise MSE by direct differences while the [B, B, D] float64 difference tensor has at most this many
#: entries (256 MiB); beyond, by the expansion |a - b|^2 = |a|^2 + |b|^2 - 2 a.b.
_DIRECT_MSE_ENTRIES = 2**25
#: Pairwise SSIM is computed over at most this many image pairs at a time.
_SSIM_PAIRS_PER_CHUNK = 1024


def pairwise_mse(reconstruction: Tensor, truth: Tensor) -> Tensor:
    """``[B, B]`` matrix whose entry ``[i, j]`` is the MSE between ``reconstruction[i]`` and ``truth[j]`` (float64)."""
    a = reconstruction.to(torch.float64).flatten(1)
    b = truth.to(torch.float64).flatten(1)
    if a.numel() * b.shape[0] <= _DIRECT_MSE_ENTRIES:
        return (a[:, None, :] - b[None, :, :]).square().mean(dim=2)
    # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, in float64 so the cancellation is harmless for images in [0, 1].
    sq = a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2.0 * (a @ b.T)
    return sq.clamp_min(0.0) / a.shape[1]


def pairwise_ssim(reconstruction: Tensor, truth: Tensor) -> Tensor:
    """``[B, B]`` matrix whose entry ``[i, j]`` is the SSIM between ``reconstruction[i]`` and ``truth[j]`` (float64)."""
    n = reconstruction.shape[0]
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    out = torch.empty(n * n, dtype=torch.float64)
    for start in range(0, n * n, _SSIM_PAIRS_PER_CHUNK):
        sl = slice(start, start + _SSIM_PAIRS_PER_CHUNK)
        out[sl] = ssim(reconstruction[ii[sl]], truth[jj[sl]]).to(torch.float64).cpu()
    return out.view(n, n)


def match_to_truth(reconstruction: Tensor, truth: Tensor, cost: str = "mse") -> Tensor:
    """Return the permutation ``perm`` (a LongTensor of shape ``[B]``) such that ``reconstruction[perm]`` is
    aligned with ``truth``: ``reconstruction[perm[j]]`` is the image paired with ``truth[j]``.

    The pairing minimises the total cost over all ``B!`` permutations (Kuhn-Munkres; see the module docstring).
    ``cost`` is ``"mse"`` (pixel mean squared error) or ``"ssim"`` (negated SSIM, so the total SSIM is
    maximised). Both batches must have the same shape ``[B, C, H, W]`` and be finite.
    """
    _check_pair(reconstruction, truth, "match_to_truth")
    if cost not in COSTS:
        raise unknown_name("assignment cost", str(cost), COSTS)
    if not (torch.isfinite(reconstruction).all() and torch.isfinite(truth).all()):
        raise ConfigError("match_to_truth: images contain NaN or infinite values")
    with torch.no_grad():
        if cost == "mse":
            matrix = pairwise_mse(reconstruction, truth)
        else:
            matrix = -pairwise_ssim(reconstruction, truth)
    rows, cols = linear_sum_assignment(matrix.cpu().numpy())
    # rows[k] (a reconstruction) is assigned to truth cols[k]; invert so perm is indexed by truth position.
    perm = np.empty(len(rows), dtype=np.int64)
    perm[cols] = rows
    return torch.from_numpy(perm).to(reconstruction.device)
