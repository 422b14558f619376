"""Trap weights (Boenisch, Dziedzic, Schuster, Shamsabadi, Shumailov, Papernot, "When the Curious Abandon
Honesty: Federated Learning Is Not Private", IEEE EuroS&P 2023): closed-form recovery of individual samples
from the gradient of a malicious block of sparse-firing ReLU rows.

The server sent :class:`gradaudit.models.trap.TrapWeightsModel`: K rows w_i (each a different direction) whose
biases make each fire for a small fraction of the inputs. For the mean gradient of B samples (see that module),

    dW_i = (1/B) sum_{j: w_i . x_j + b_i > 0} c_ij x_j,        db_i = (1/B) sum_{j: w_i . x_j + b_i > 0} c_ij,

so every row that fires for exactly one sample j gives the candidate dW_i / db_i = x_j exactly (float64 here;
the float32 gradient limits it to ~1e-7 relative). A row that fires for several samples gives a c-weighted
blend of them; a row that fires for none has db_i = 0 exactly without a defense. Rows with |db_i| below
``rtol * max_i |db_i|`` are taken as silent.

The attacker cannot see how many samples fired a row. It keeps the candidates that pass the checks a single
sample always passes:

* its pixels x * std + mean lie in [0, 1] (within ``range_tol``);
* the row fires for it: w_i . x + b_i > 0 (a blend whose c_ij have opposite signs usually fails this);
* every row it fires has a non-zero gradient: a real sample contributes to each row it fires (its c_ij only
  vanish by coincidence), so a candidate firing a silent row is not a sample.

Several rows may isolate the same sample; their candidates agree to float precision. Candidates closer than
``merge_tol`` (root-mean-square pixel distance) are merged. Since the back-projection columns u_i differ, the
weights c_ij of one sample set differ between rows, and so do their blends: two rows agreeing on a candidate
isolate one sample, certainly (``confirmed``). A candidate seen by one row only may still be a blend of
samples whose c_ij share a sign (a convex combination passes every check). Confirmed samples unmask some of
them: a row that a confirmed sample fires holds that sample, so a *different* single-row candidate from that
row is a blend, and is dropped. ``config["distinct"]`` (what remains) is an upper estimate of the samples
recovered and ``config["confirmed"]`` a lower one. (Measured on 64 embedded photos with K = 512 rows: 46 distinct,
all exact, 33 confirmed. On a batch of 64 of the benchmark's images, K = 512, the check cut the distinct
candidates from 137 to 56 and raised the samples recovered from 27 to 43: blends had crowded out real ones.)

``reconstruct`` returns B images: the distinct candidates, most confirmed first, then by strength (|db_i| of
their strongest row), then zeros for the samples no row isolated; labels are the observation's when the
threat model grants them (the attack itself ignores labels). The attack uses only the observation: the
malice is in the model the server sent. A FedAvg update is converted to a mean-gradient estimate
((theta_0 - theta_K) / (K lr)), exact for one local step.
"""

from __future__ import annotations

import time
from typing import Annotated

import torch
from annotated_types import Ge

from ...errors import ConfigError
from ...threat.observation import Observation
from ...threat.threat_model import AttackThreat
from ..base import Attack, ProgressFn, Reconstruction, register_attack


@register_attack("trap-weights")
class TrapWeights(Attack):
    """Read samples out of the trap rows' gradient (see the module docstring).

    Args:
        layer: parameter prefix of the trap Linear layer (``{layer}.weight`` [K, N], ``{layer}.bias`` [K]).
        rtol: a row is silent when |db_i| is below ``rtol`` times the largest |db_i|.
        range_tol: how far outside [0, 1] a candidate's pixels may lie.
        merge_tol: candidates closer than this (RMS distance in pixel units) are one sample.

    ``config`` reports ``rows_nonzero`` (rows with a gradient), ``candidates`` (those whose candidate passes
    the single-sample checks), ``distinct`` (distinct images among them), ``confirmed`` (images isolated by
    at least two rows), ``recovered`` (images returned) and per returned image its rows and strength.
    """

    name = "trap-weights"
    threat = AttackThreat(server="malicious", models=("trap-weights",), labels="ignores",
                          note="each trap row firing for a single sample gives dW_i / db_i = x_j exactly")

    def __init__(self, layer: str = "trap", rtol: Annotated[float, Ge(0)] = 1e-6,
                 range_tol: Annotated[float, Ge(0)] = 0.02, merge_tol: Annotated[float, Ge(0)] = 1e-3,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        for what, value in (("rtol", rtol), ("range_tol", range_tol), ("merge_tol", merge_tol)):
            if not float(value) >= 0:
                raise ConfigError(f"trap-weights {what} must be >= 0, got {value}")
        self.layer, self.rtol = layer, float(rtol)
        self.range_tol, self.merge_tol = float(range_tol), float(merge_tol)
        self.device, self.seed = torch.device(device), seed

    def _trap(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        wname, bname = f"{self.layer}.weight", f"{self.layer}.bias"
        if wname not in obs.parameters or bname not in obs.parameters:
            raise ConfigError(f"trap-weights needs the malicious trap block ('{wname}', '{bname}'): the server "
                              f"must send model 'trap-weights' (models/trap.py); model '{obs.model.name}' has no "
                              f"such layer")
        grads = obs.gradient_estimate
        f64 = dict(dtype=torch.float64, device=self.device)
        weight, bias = obs.parameters[wname].to(**f64), obs.parameters[bname].to(**f64)
        n = 1
        for s in obs.model.input_shape:
            n *= s
        if weight.dim() != 2 or weight.shape[1] != n or bias.shape != (weight.shape[0],):
            raise ConfigError(f"'{wname}' must have shape [K, {n}] (one row per trap neuron over the flattened "
                              f"input), got {tuple(weight.shape)}")
        return weight, bias, grads[wname].to(**f64), grads[bname].to(**f64)

    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        t0 = time.perf_counter()
        obs = observation
        weight, bias, dw, db = self._trap(obs)
        scale = float(db.abs().max()) if db.numel() else 0.0
        live = db.abs() > self.rtol * scale if scale > 0 else torch.zeros_like(db, dtype=torch.bool)
        rows = torch.nonzero(live).flatten()
        c, h, wd = obs.model.input_shape
        mean = torch.tensor(obs.data.mean, dtype=torch.float64, device=self.device).view(1, c, 1, 1)
        std = torch.tensor(obs.data.std, dtype=torch.float64, device=self.device).view(1, c, 1, 1)
        x = dw[rows] / db[rows, None]                                  # [M, N] normalised candidates
        pixels = (x.view(-1, c, h, wd) * std + mean).flatten(1)        # [M, N] in pixel units
        in_range = ((pixels >= -self.range_tol) & (pixels <= 1 + self.range_tol)).all(1)
        pre = x @ weight.T + bias                                      # [M, K]: w_l . x + b_l
        slack = 1e-6 * (1.0 + bias.abs().max() + weight.abs().sum(1).max() * x.abs().amax(1, keepdim=True))
        fires_own = pre[torch.arange(len(rows)), rows] > -slack[:, 0]
        fires_silent = ((pre > slack) & ~live[None, :]).any(1)
        ok = in_range & fires_own & ~fires_silent
        good = torch.nonzero(ok).flatten()
        strength = db[rows].abs()
        # merge candidates that agree: single linkage over pairs closer than merge_tol (RMS, pixel units)
        groups = _merge(pixels[good], self.merge_tol)
        clusters: list[list[int]] = []
        for g in range(int(groups.max()) + 1 if len(good) else 0):
            members = good[groups == g]
            members = members[torch.argsort(strength[members], descending=True)]
            clusters.append(members.tolist())
        clusters.sort(key=lambda m: (-len(m), -float(strength[m[0]])))
        # a row fired by a confirmed sample holds that sample: if it gave another candidate, that is a blend
        confirmed = [m for m in clusters if len(m) >= 2]
        explained = torch.zeros_like(live)
        if confirmed:
            reps = torch.stack([x[m[0]] for m in confirmed])
            explained = ((reps @ weight.T + bias) > slack[[m[0] for m in confirmed]]).any(0)
        singles = [m for m in clusters if len(m) == 1]
        blends = [m for m in singles if bool(explained[rows[m[0]]])]
        clusters = confirmed + [m for m in singles if not bool(explained[rows[m[0]]])]
        batch = obs.batch_size
        keep = clusters[:batch]
        images = torch.zeros(batch, c, h, wd, dtype=torch.float32)
        for i, members in enumerate(keep):
            images[i] = pixels[members[0]].view(c, h, wd).clamp(0, 1).to(torch.float32).cpu()
        if progress is not None:
            progress(1, 1, 0.0)
        info = {
            "layer": self.layer, "neurons": int(weight.shape[0]), "rtol": self.rtol, "range_tol": self.range_tol,
            "merge_tol": self.merge_tol, "rows_nonzero": int(rows.numel()), "candidates": int(good.numel()),
            "distinct": len(clusters), "confirmed": len(confirmed), "recovered": len(keep),
            "rejected": {"range": int((~in_range).sum()), "row_does_not_fire": int((~fires_own).sum()),
                         "fires_a_silent_row": int(fires_silent.sum()), "row_holds_a_confirmed_sample": len(blends)},
            "candidate_rows": [[int(rows[j]) for j in m] for m in keep],
            "candidate_strength": [float(strength[m[0]]) for m in keep],
            "update_kind": obs.update_kind,
        }
        return Reconstruction(
            images=images, labels=None if obs.labels is None else obs.labels.detach().cpu().clone(),
            attack=self.name, iterations=0, seconds=time.perf_counter() - t0,
            label_source="given" if obs.labels is not None else "none", config=info)


def _merge(points: torch.Tensor, tol: float) -> torch.Tensor:
    """Group labels [M] (0..G-1, in order of first appearance) of single-linkage clusters: two points are linked
    when their RMS distance is at most ``tol``."""
    m = points.shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.long)
    d = torch.cdist(points, points) / points.shape[1] ** 0.5
    adjacent = (d <= tol).cpu()
    label = [-1] * m
    count = 0
    for start in range(m):
        if label[start] >= 0:
            continue
        label[start], stack = count, [start]
        while stack:
            i = stack.pop()
            for j in torch.nonzero(adjacent[i]).flatten().tolist():
                if label[j] < 0:
                    label[j] = count
                    stack.append(j)
        count += 1
    return torch.tensor(label, dtype=torch.long, device=points.device)
