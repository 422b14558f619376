"""Vulnerability proxies: which samples an attack will reconstruct best, predicted without attacking.

* :mod:`.hessian` - Hessian-vector products of the L2 / cosine gradient-matching loss w.r.t. the input at the
  ground truth (H = J^T A J), single and vmap-batched over samples, and dense references for tests.
* :mod:`.eigen` - extreme eigenvalues from matrix-vector products: ARPACK (scipy eigsh), batched Lanczos,
  power iteration.
* :mod:`.lavp` - per-sample proxies: gradient norm, LAVP (lambda_max / lambda_min for L2 and cosine) and
  their loss-agnostic fusion (Hong et al., arXiv 2312.12488, seed 000); :func:`rank_samples` for the CLI.
* :mod:`.correlation` - Spearman rank correlation with bootstrap confidence intervals.
"""

from .correlation import SpearmanResult, correlate_proxies, spearman_bootstrap
from .eigen import EigenResult, eigsh_extreme, lanczos, power_iteration, power_iteration_min
from .hessian import (BatchedHessian, GradientMap, SampleHessian, batched_hvp_fn, dense_hessian, hvp_fn, jacobian,
                      matching_loss)
from .lavp import PROXY_COLUMNS, ProxyTable, compute_proxies, rank_samples, recover_sample_labels

__all__ = [
    "GradientMap", "SampleHessian", "BatchedHessian", "hvp_fn", "batched_hvp_fn", "jacobian", "dense_hessian",
    "matching_loss", "EigenResult", "eigsh_extreme", "lanczos", "power_iteration", "power_iteration_min",
    "ProxyTable", "PROXY_COLUMNS", "compute_proxies", "rank_samples", "recover_sample_labels",
    "SpearmanResult", "spearman_bootstrap", "correlate_proxies",
]
