"""Label recovery from the observed update, before any image is optimised.

For cross-entropy the gradient of the last layer's bias is b_c = (1/B) sum_i (p_ic - 1[y_i = c]), and its
weight-gradient rows are (1/B) sum_i (p_ic - 1[y_i = c]) h_i^T with non-negative features h_i (after ReLU or
sigmoid).

* iDLG (Zhao et al. 2020), B = 1: the single negative entry of b (or the row of dW with a negative sum) is
  the label. When b has no negative entry (a defense such as dropout zeroed it), the rows of dW decide.
* Batches (counting in the style of Wainakh et al. 2022, "LLG+"): classes with negative b_c are present, and
  their multiplicity is n_c ~ B (mean_i p_ic - b_c), where mean_i p_ic is estimated from the model's outputs on
  dummy inputs. Without a bias, the row sums of dW are divided by the mean feature sum, estimated the same way.
  Counts are rounded so that every present class keeps at least one sample and the total is B.

For FedAvg updates the gradient estimate (theta_0 - theta_K)/(K lr) is used, which is approximate for K > 1.
"""

from __future__ import annotations

import torch

from ...threat.observation import Observation
from .victim import FunctionalVictim, last_linear_layer


def _dummy_statistics(victim: FunctionalVictim, observation: Observation, weight_name: str, n: int = 32,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean softmax and mean last-layer feature sum of the model on uniform-noise inputs."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = observation.model.input_shape
    u = torch.rand(n, c, h, w, generator=g).to(victim.device)
    mean = torch.tensor(observation.data.mean, device=victim.device).view(1, -1, 1, 1)
    std = torch.tensor(observation.data.std, device=victim.device).view(1, -1, 1, 1)
    modules = dict(victim.model.named_modules())
    layer = modules[weight_name.rsplit(".", 1)[0]] if "." in weight_name else victim.model
    feats: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda m, inp: feats.append(inp[0].detach()))
    try:
        with torch.no_grad():
            logits, _ = victim(victim.params, (u - mean) / std)
    finally:
        handle.remove()
    return logits.softmax(-1).mean(0), feats[0].flatten(1).sum(1).mean()


def _round_counts(estimate: torch.Tensor, present: torch.Tensor, total: int) -> torch.Tensor:
    """Integer counts summing to ``total`` close to ``estimate``; classes with a negative signal keep >= 1.

    A class can be present without a negative bias gradient when the model is saturated on it
    (mean p_c ~ 1), so the other classes are not forced to zero: the estimate decides.
    """
    counts = estimate.clamp_min(0).round().long()
    counts[present & (counts == 0)] = 1
    residual = estimate - counts
    while counts.sum() < total:
        c = int(residual.argmax())
        counts[c] += 1
        residual[c] -= 1
    while counts.sum() > total:
        cand = residual.clone()
        cand[counts <= present.long()] = float("inf")
        c = int(cand.argmin())
        counts[c] -= 1
        residual[c] += 1
    return counts


def recover_labels(observation: Observation, victim: FunctionalVictim | None = None) -> tuple[torch.Tensor, str]:
    """Return (labels [B] as a sorted multiset, method name)."""
    victim = victim or FunctionalVictim(observation)
    k = observation.model.num_classes
    weight_name, bias_name = last_linear_layer(victim.model, k)
    grads = observation.gradient_estimate
    B = observation.batch_size
    if bias_name is not None:
        signal = grads[bias_name].detach().float().cpu()
        scale = torch.tensor(1.0)
    else:
        signal = grads[weight_name].detach().float().cpu().sum(1)
        scale = None
    if B == 1:
        if bias_name is not None and not bool((signal < 0).any()):
            # the label's (negative) bias entry was dropped or pruned away by a defense: the weight rows still
            # carry its sign, summed over many entries (robust to dropping part of them)
            return grads[weight_name].detach().float().cpu().sum(1).argmin().view(1), "idlg-weights"
        return signal.argmin().view(1), "idlg"
    p_mean, feat_sum = _dummy_statistics(victim, observation, weight_name)
    if scale is None:
        scale = feat_sum.cpu().clamp_min(1e-12)
    estimate = B * (p_mean.cpu() - signal / scale)
    present = signal < 0
    counts = _round_counts(estimate, present, B)
    labels = torch.repeat_interleave(torch.arange(k), counts)
    return labels, "count"
