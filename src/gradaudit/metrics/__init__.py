"""How well a reconstruction matches the private batch: pixel metrics (MSE, PSNR, SSIM), LPIPS from offline
pretrained weights only, optimal alignment of the arbitrary reconstruction order, and label accuracy."""

from gradaudit.metrics.assignment import match_to_truth, pairwise_mse, pairwise_ssim
from gradaudit.metrics.image import MSE_FLOOR, batch_psnr, mse, psnr, rmse, ssim
from gradaudit.metrics.labels import label_accuracy
from gradaudit.metrics.lpips import LPIPSMetric, LPIPSUnavailableError
from gradaudit.metrics.scores import ReconstructionScores, score_reconstruction

__all__ = [
    "MSE_FLOOR",
    "LPIPSMetric",
    "LPIPSUnavailableError",
    "ReconstructionScores",
    "batch_psnr",
    "label_accuracy",
    "match_to_truth",
    "mse",
    "pairwise_mse",
    "pairwise_ssim",
    "psnr",
    "rmse",
    "score_reconstruction",
    "ssim",
]
