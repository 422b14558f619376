"""Robbing the Fed (Fowl, Geiping, Czaja, Goldblum, Goldstein; arXiv:2110.13057, ICLR 2022): closed-form
recovery of individual samples from the gradient of a malicious imprint block.

The server sent :class:`gradaudit.models.malicious.ImprintedModel`: K rows that measure the same h(x) = w . x,
biases -q_k at increasing thresholds, and a back projection with identical columns. For the mean gradient
of such a block (see that module),

    dW_k = (1/B) sum_{i: h_i > q_k} c_i x_i,       db_k = (1/B) sum_{i: h_i > q_k} c_i,

so with the rows sorted by threshold, the difference of consecutive rows keeps only the samples whose
measurement lies in bin k = [q_k, q_{k+1}) (the last row, k = K-1, is its own difference):

    dW_k - dW_{k+1} = (1/B) sum_{i in bin k} c_i x_i,     db_k - db_{k+1} = (1/B) sum_{i in bin k} c_i,

and for a bin holding a single sample i the ratio is x_i, exactly (up to float rounding). A bin holding
several samples gives their c-weighted average, a blend. Bins whose bias difference is below
``rtol * max_k |db_k - db_{k+1}|`` are taken as empty (an empty bin's difference is exactly zero without a
defense).

The attacker cannot see how many samples a bin holds. It keeps every non-empty bin and flags as
*consistent* the candidates that pass two checks a single sample always passes: the candidate's own
measurement w . x lies in its bin, and its pixels lie in [0, 1] (within ``range_tol``). A blend of samples
whose c_i have opposite signs usually fails them; a blend of same-sign c_i (a convex combination) passes, so
``config["bins_consistent"]`` is an upper estimate of the number of isolated samples.

The attack uses only the observation (weights, update, normalisation): it is honest by construction; the
malice is in the model the server sent. FedAvg local updates are converted to a mean-gradient estimate
((theta_0 - theta_K) / (K lr)), exact for one local step.
"""

from __future__ import annotations

import time

import torch

from ...errors import ConfigError
from ...threat.observation import Observation
from ...threat.threat_model import AttackThreat
from ..base import Attack, ProgressFn, Reconstruction, register_attack


@register_attack("robbing-the-fed")
class RobbingTheFed(Attack):
    """Read samples out of the imprint block's gradient.

    Args:
        layer: parameter prefix of the imprint Linear layer (``{layer}.weight`` [K, N], ``{layer}.bias`` [K]).
        rtol: a bin is empty when its bias-gradient difference is below ``rtol`` times the largest difference.
        range_tol: how far outside [0, 1] a consistent candidate's pixels may lie.
        order: "bins" (candidates in threshold order) or "strength" (largest |db difference| first).

    ``reconstruct`` returns B images: the candidates (at most B: the B with the largest bias difference), then
    zeros for the samples no bin isolated. ``config`` reports ``bins_nonempty`` (candidates found),
    ``bins_consistent`` (candidates passing the single-sample checks), ``bins`` (K) and per candidate its bin
    index, bias difference and whether it is consistent.
    """

    name = "robbing-the-fed"
    threat = AttackThreat(server="malicious", models=("imprint",), labels="ignores",
                          note="reads single samples out of the imprint block's bins")

    def __init__(self, layer: str = "imprint", rtol: float = 1e-5, range_tol: float = 0.02,
                 order: str = "bins", device: str | torch.device = "cpu", seed: int = 0) -> None:
        if order not in ("bins", "strength"):
            raise ConfigError(f"robbing-the-fed order must be 'bins' or 'strength', got '{order}'")
        if not rtol >= 0:
            raise ConfigError(f"robbing-the-fed rtol must be >= 0, got {rtol}")
        self.layer, self.rtol, self.range_tol, self.order = layer, float(rtol), float(range_tol), order
        self.device, self.seed = torch.device(device), seed

    def _imprint(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        wname, bname = f"{self.layer}.weight", f"{self.layer}.bias"
        if wname not in obs.parameters or bname not in obs.parameters:
            raise ConfigError(f"robbing-the-fed needs the malicious imprint block ('{wname}', '{bname}'): the "
                              f"server must send model 'imprint' (models/malicious.py); model "
                              f"'{obs.model.name}' has no such layer")
        grads = obs.gradient_estimate
        f64 = dict(dtype=torch.float64, device=self.device)
        weight, bias = obs.parameters[wname].to(**f64), obs.parameters[bname].to(**f64)
        n = 1
        for s in obs.model.input_shape:
            n *= s
        if weight.dim() != 2 or weight.shape[1] != n or bias.shape != (weight.shape[0],):
            raise ConfigError(f"'{wname}' must have shape [K, {n}] (one row per bin over the flattened input), "
                              f"got {tuple(weight.shape)}")
        return weight, bias, grads[wname].to(**f64), grads[bname].to(**f64)

    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        t0 = time.perf_counter()
        obs = observation
        weight, bias, dw, db = self._imprint(obs)
        k_bins = weight.shape[0]
        # every row measures the same h = w . x, and row k fires when h > q_k = -b_k: sort by threshold.
        w = weight[0]
        if not torch.allclose(weight, w.expand_as(weight), rtol=1e-5, atol=1e-8 * float(w.abs().max())):
            raise ConfigError(f"'{self.layer}.weight' rows differ: Robbing the Fed needs every row to be the same "
                              f"measurement (ImprintedModel)")
        thresholds = -bias
        order = torch.argsort(thresholds)
        thresholds, dw, db = thresholds[order], dw[order], db[order]
        zero_w, zero_b = torch.zeros_like(dw[:1]), torch.zeros_like(db[:1])
        ddw = dw - torch.cat([dw[1:], zero_w])              # [K, N]: samples with q_k < h <= q_{k+1}
        ddb = db - torch.cat([db[1:], zero_b])              # [K]
        scale = float(ddb.abs().max()) if ddb.numel() else 0.0
        nonempty = torch.nonzero(ddb.abs() > self.rtol * scale).flatten() if scale > 0 else \
            torch.zeros(0, dtype=torch.long, device=self.device)
        batch = obs.batch_size
        c, h, wd = obs.model.input_shape
        mean = torch.tensor(obs.data.mean, dtype=torch.float64, device=self.device).view(1, c, 1, 1)
        std = torch.tensor(obs.data.std, dtype=torch.float64, device=self.device).view(1, c, 1, 1)
        candidates = ddw[nonempty] / ddb[nonempty, None]   # normalised inputs x_i
        pixels = (candidates.view(-1, c, h, wd) * std + mean)
        upper = torch.cat([thresholds[1:], thresholds.new_tensor([float("inf")])])
        measured = candidates @ w
        slack = 1e-6 * (1.0 + thresholds.abs().max())
        in_bin = (measured >= thresholds[nonempty] - slack) & (measured <= upper[nonempty] + slack)
        in_range = ((pixels >= -self.range_tol) & (pixels <= 1 + self.range_tol)).flatten(1).all(1)
        consistent = in_bin & in_range
        # keep at most B candidates (largest |ddb| first), then present them in the chosen order
        strength = ddb[nonempty].abs()
        keep = torch.argsort(strength, descending=True)[:batch]
        if self.order == "bins":
            keep = keep.sort().values
        images = torch.zeros(batch, c, h, wd, dtype=torch.float32)
        images[: len(keep)] = pixels[keep].clamp(0, 1).to(torch.float32).cpu()
        if progress is not None:
            progress(1, 1, 0.0)
        info = {
            "layer": self.layer, "bins": int(k_bins), "rtol": self.rtol, "range_tol": self.range_tol,
            "bins_nonempty": int(nonempty.numel()), "bins_consistent": int(consistent.sum()),
            "recovered": int(len(keep)), "candidate_bins": [int(order[nonempty[i]]) for i in keep.tolist()],
            "candidate_strength": [float(strength[i]) for i in keep.tolist()],
            "candidate_consistent": [bool(consistent[i]) for i in keep.tolist()],
            "update_kind": obs.update_kind,
        }
        return Reconstruction(
            images=images, labels=None if obs.labels is None else obs.labels.detach().cpu().clone(),
            attack=self.name, iterations=0, seconds=time.perf_counter() - t0,
            label_source="given" if obs.labels is not None else "none", config=info)
