"""Score a reconstructed batch against the private batch it came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradaudit.checks import finite_or_none
from gradaudit.metrics.assignment import match_to_truth
from gradaudit.metrics.image import _check_pair, batch_psnr, mse, psnr, ssim
from gradaudit.metrics.labels import label_accuracy as _label_accuracy
from gradaudit.metrics.lpips import LPIPSMetric

LPIPS_NOT_REQUESTED = "not computed: no LPIPSMetric given"


def _mean(values: list[float] | None) -> float | None:
    if not values:
        return None
    return float(sum(values) / len(values))


@dataclass
class ReconstructionScores:
    """Per-image and mean scores of a reconstruction, after aligning it with the truth.

    Lists are indexed by ground-truth position: entry ``j`` compares ``truth[j]`` with the reconstructed image
    ``assignment[j]`` (see :func:`gradaudit.metrics.match_to_truth`). MSE/RMSE/LPIPS: lower is better;
    PSNR (dB, capped at 100 dB) and SSIM: higher is better. ``lpips`` is None when LPIPS was not computed, and
    ``lpips_status`` is then the reason (``"ok"`` when computed). ``label_accuracy`` is the order-free label
    accuracy, None when no labels were given.
    """

    mse: list[float]
    rmse: list[float]
    psnr: list[float]
    ssim: list[float]
    lpips: list[float] | None
    batch_psnr: float
    assignment: list[int]
    label_accuracy: float | None = None
    lpips_status: str = LPIPS_NOT_REQUESTED
    mean_mse: float = field(init=False)
    mean_rmse: float = field(init=False)
    mean_psnr: float = field(init=False)
    mean_ssim: float = field(init=False)
    mean_lpips: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.mean_mse = _mean(self.mse)
        self.mean_rmse = _mean(self.rmse)
        self.mean_psnr = _mean(self.psnr)
        self.mean_ssim = _mean(self.ssim)
        self.mean_lpips = _mean(self.lpips)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field; NaN and infinities become None."""
        keys = (
            "mse", "rmse", "psnr", "ssim", "lpips",
            "mean_mse", "mean_rmse", "mean_psnr", "mean_ssim", "mean_lpips",
            "batch_psnr", "assignment", "label_accuracy", "lpips_status",
        )  # fmt: skip
        out: dict[str, Any] = {}
        for key in keys:
            value = getattr(self, key)
            if key == "lpips_status":
                out[key] = value
            elif key == "assignment":
                out[key] = [int(v) for v in value]
            else:
                out[key] = finite_or_none(list(value) if isinstance(value, list) else value)
        return out


def _floats(t: Tensor) -> list[float]:
    return [float(v) for v in t.detach().to(torch.float64).cpu().tolist()]


def score_reconstruction(
    reconstruction: Tensor,
    truth: Tensor,
    true_labels: Tensor | Sequence[int] | None = None,
    predicted_labels: Tensor | Sequence[int] | None = None,
    lpips: LPIPSMetric | None = None,
) -> ReconstructionScores:
    """Score ``reconstruction`` against ``truth`` (both ``[B, C, H, W]``, truth in ``[0, 1]``).

    Steps: (1) the reconstruction is made a valid image: NaN -> 0, then clamped to ``[0, 1]`` (a diverged
    attack then scores badly instead of crashing the evaluation); (2) it is aligned with the truth by optimal
    assignment on the MSE (:func:`match_to_truth`), since inversion returns images in arbitrary order;
    (3) MSE, RMSE, PSNR, SSIM, batch PSNR and, when ``lpips`` is given and available, LPIPS are computed on
    the aligned pairs. Label accuracy (order-free) is computed when both label sequences are given.
    """
    _check_pair(reconstruction, truth, "score_reconstruction")
    with torch.no_grad():
        recon = torch.nan_to_num(reconstruction.detach(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
        truth = truth.detach()
        perm = match_to_truth(recon, truth, cost="mse")
        aligned = recon[perm]
        per_mse = mse(aligned, truth)
        lpips_values: list[float] | None = None
        if lpips is None:
            lpips_status = LPIPS_NOT_REQUESTED
        elif not lpips.available:
            lpips_status = str(lpips.reason)
        else:
            lpips_values = _floats(lpips(aligned, truth))
            lpips_status = "ok"
        accuracy = None
        if true_labels is not None and predicted_labels is not None:
            accuracy = _label_accuracy(predicted_labels, true_labels)
        return ReconstructionScores(
            mse=_floats(per_mse),
            rmse=_floats(per_mse.sqrt()),
            psnr=_floats(psnr(aligned, truth)),
            ssim=_floats(ssim(aligned, truth)),
            lpips=lpips_values,
            batch_psnr=float(batch_psnr(aligned, truth)),
            assignment=[int(i) for i in perm.tolist()],
            label_accuracy=accuracy,
            lpips_status=lpips_status,
        )
