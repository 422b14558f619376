"""Data leakage in Federated Averaging: attack the update of E epochs of minibatches as the client made it.

Dimitrov, Balunovic, Konstantinov and Vechev, "Data Leakage in Federated Averaging", TMLR 2022. A FedAvg client
runs E epochs over its N samples in minibatches of b, each epoch in a fresh random order the server never
sees, and shares theta_0 - theta_K (:mod:`gradaudit.threat.local_training`). Most attacks assume K full-batch
steps instead (Geiping et al. 2020, section 5; :class:`~.objective.MatchingObjective`), which is not what the
client did. This attack models the client's training:

* **Simulation.** One copy X_e of the batch per epoch, cut into the epoch's minibatches by position (the
  assignment of samples to positions is the unknown order, so it is absorbed into the variables); the K steps
  are unrolled with the client's optimiser (lr, momentum, weight decay) and the simulated update
  theta_0 - theta_K(X, Y) is matched to the observed one (cosine distance, as Inverting Gradients).
* **Labels by position.** Which labels fell into which minibatch is unknown even when the label multiset is
  known (or recovered by counting from the update). Every position's label is soft (softmax logits, learnt with
  the images), started at one hard arrangement of the multiset (:func:`hard_label_start`), with a penalty that
  keeps each epoch's label counts equal to the multiset's: rho_c sum_e || sum_j softmax(L_ej) - n ||^2 / N^2.
* **Epoch order-invariant prior.** The E copies show the same N images in different orders. Each iteration the
  copies are aligned to the first by a minimum-cost assignment on their pixel distance (labels that disagree
  cost extra), and the prior rho_e mean_{e,j} || X_e[pi_e(j)] - mean_e' X_e'[pi_e'(j)] ||^2 pulls the aligned
  copies together (the paper's permutation-invariant prior, here the squared distance to the epoch mean).
* **Reconstruction.** The mean of the aligned copies (and of their soft labels).

Everything else is the gradient-matching engine's: total variation with the model family's candidate weights
and successive halving (``tune``), observation-only selection, best iterate, ``time_budget``. Against a FedSGD
or full-batch FedAvg observation there is nothing to model beyond the engine's objective, and the attack is
Inverting Gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment

from ...errors import ConfigError
from ...threat.local_training import LocalTraining, sgd_step
from ...threat.observation import Observation
from ...threat.threat_model import AttackThreat
from ..base import register_attack
from .engine import GradientMatchingAttack, MatchingConfig, MatchingSetup, attack_labels
from .objective import MatchingObjective, func_param_grad

#: extra cost of aligning two images whose (soft) labels disagree, in units of the mean pixel distance
LABEL_MISMATCH_COST = 10.0
#: probability the starting label logits give each position's label of the multiset (the rest spread evenly)
HARD_START = 0.99


def hard_label_start(labels: torch.Tensor, classes: int, p: float = HARD_START) -> torch.Tensor:
    """Log-probabilities [N, K] that put label ``labels[j]`` on position j with probability ``p``.

    Starting every position at the batch's label proportions (the symmetric start) leaves the partition of the
    labels into minibatches to be found by gradient descent on the soft labels; measured on 3 embedded batches
    (N = 4, b = 2, ConvNet without BN, 200 iterations) it ended 1.6 dB (E = 1) and 1.6 dB (E = 2) below starting
    from one hard arrangement of the multiset, which the optimiser then adjusts."""
    n = labels.shape[0]
    probs = torch.full((n, classes), (1.0 - p) / max(1, classes - 1))
    probs[torch.arange(n), labels] = p
    return probs.log()


def epoch_permutations(x: torch.Tensor, epochs: int, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
    """For each of the E copies of a batch (``x`` [E N, ...]), the order that lines it up with the first copy.

    Copy e is matched to copy 0 by a minimum-cost assignment (Hungarian) on the squared pixel distance, plus
    :data:`LABEL_MISMATCH_COST` times the mean distance where the argmax labels (``labels`` [E N, K]) disagree.
    Computed on detached values: an alignment, not a term to differentiate."""
    n = x.shape[0] // epochs
    copies = x.detach().reshape(epochs, n, -1).float()
    hard = None if labels is None else labels.detach().reshape(epochs, n, -1).argmax(-1)
    perms = [torch.arange(n, device=x.device)]
    for e in range(1, epochs):
        cost = torch.cdist(copies[0], copies[e]) ** 2
        if hard is not None:
            cost = cost + LABEL_MISMATCH_COST * cost.mean() * (hard[0][:, None] != hard[e][None, :])
        _, col = linear_sum_assignment(cost.cpu().numpy())
        perms.append(torch.as_tensor(col, device=x.device))
    return perms


def aligned(t: torch.Tensor, perms: list[torch.Tensor]) -> torch.Tensor:
    """``t`` [E N, ...] as [E, N, ...] with copy e reordered by ``perms[e]`` (differentiable in ``t``)."""
    n = t.shape[0] // len(perms)
    return torch.stack([t[e * n:(e + 1) * n][p] for e, p in enumerate(perms)])


class MinibatchFedAvgObjective(MatchingObjective):
    """J(X, L) = sum_d a_d D_d(u(X, softmax L), u*) + sum_r w_r R_r(X) + rho_e P_epoch(X) + rho_c P_count(L).

    u(X, Y): the client's E epochs of minibatch SGD unrolled on the epoch copies (module docstring); R_r act on
    all copies; P_epoch is the order-invariant prior, P_count the per-epoch label-count penalty."""

    def __init__(self, victim, observation: Observation, *, counts: torch.Tensor, consensus: float,
                 count_weight: float, **kwargs: Any) -> None:
        super().__init__(victim, observation, **kwargs)
        self.training: LocalTraining = observation.local_training
        self.n = observation.batch_size
        self.epochs = self.training.epochs_of(self.n)
        self.positions = [(b[0], b[-1] + 1) for b in self.training.positions(self.n)]
        self.counts = counts.to(victim.device, torch.float32)
        self.consensus, self.count_weight = float(consensus), float(count_weight)

    def update_of(self, x: torch.Tensor, y: torch.Tensor, param_grad=func_param_grad):
        victim, names, params = self.victim, self.names, self.victim.params
        p, stats, buf = params, None, None
        for e in range(self.epochs):
            for lo, hi in self.positions:
                a, b = e * self.n + lo, e * self.n + hi
                g, st = param_grad(victim.loss, p, x[a:b], y[a:b])
                stats = st if stats is None else stats
                p, buf = sgd_step(p, g, self.training, buf)
        return [params[k] - p[k] for k in names], stats

    def __call__(self, x, label_param, dist_w, reg_w, param_grad=func_param_grad, latent=None):
        total, aux = super().__call__(x, label_param, dist_w, reg_w, param_grad, latent)
        soft = label_param.softmax(-1)
        if self.consensus and self.epochs > 1:
            copies = aligned(x, epoch_permutations(x, self.epochs, soft))
            total = total + self.consensus * ((copies - copies.mean(0, keepdim=True)) ** 2).mean()
        if self.count_weight:
            per_epoch = soft.reshape(self.epochs, self.n, -1).sum(1)
            total = total + self.count_weight * ((per_epoch - self.counts) ** 2).sum() / self.n ** 2
        return total, aux


@register_attack("fedavg-leakage")
class FedAvgLeakageAttack(GradientMatchingAttack):
    """Dimitrov et al. (TMLR 2022) against FedAvg updates of minibatch epochs; see the module docstring.

    Args:
        consensus: rho_e, weight of the epoch order-invariant prior. count_weight: rho_c, of the per-epoch
            label-count penalty. tv: total-variation weight (None: the model family's tuning candidates).
        iterations, lr, signed, restarts, schedule, init, tune, select, eta, time_budget, labels: of the
            gradient-matching engine (:class:`~.engine.MatchingConfig`); ``labels`` gives the multiset
            ("auto": the observation's labels when granted, else counted from the update).

    Example::

        attack = FedAvgLeakageAttack(iterations=300)
        rec = attack.reconstruct(observation)   # observation of a FedAvg client with local_batch_size set
    """

    name = "fedavg-leakage"
    threat = AttackThreat(server="honest", labels="uses",
                          note="simulates the client's local epochs of minibatches (FedAvg updates)")

    def __init__(self, consensus: float = 0.05, count_weight: float = 1.0, tv: float | None = None,
                 iterations: int = 400, lr: float = 0.1, signed: bool = True, restarts: int = 1,
                 schedule: str = "multistep", init: str = "randn", tune: str = "auto", select: str = "adaptive",
                 eta: int = 2, time_budget: float | None = None, labels: str = "auto", boxed: bool = True,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        for key, value in (("consensus", consensus), ("count_weight", count_weight)):
            if not (isinstance(value, (int, float)) and value >= 0 and value == value and value != float("inf")):
                raise ConfigError(f"fedavg-leakage: {key} must be a finite number >= 0, got {value!r}")
        if labels not in ("auto", "given", "recover"):
            raise ConfigError(f"fedavg-leakage learns which label sits where; 'labels' says where the multiset "
                              f"comes from: auto, given or recover (got '{labels}')")
        regs = {"tv": float(tv)} if tv is not None else {"tv": 1e-3}
        config = MatchingConfig(distance="cosine", regularizers=regs, optimizer="adam", lr=lr, signed=signed,
                                iterations=iterations, restarts=restarts, schedule=schedule, boxed=boxed,
                                init=init, labels=labels, tune="off" if tv is not None else tune,
                                select=select, eta=eta, time_budget=time_budget, vectorize=False)
        super().__init__(config, device=device, seed=seed, name=self.name)
        self.consensus, self.count_weight = float(consensus), float(count_weight)

    def setup(self, observation: Observation) -> MatchingSetup:
        base = super().setup(observation)
        obs = base.observation
        if obs.update_kind != "local_update" or not obs.local_training.minibatched(obs.batch_size):
            return base  # FedSGD or full-batch steps: the engine's objective is already the client's training
        labels = base.labels if base.labels is not None else attack_labels(obs, base.victim, "auto", self.device)[0]
        k = obs.model.num_classes
        counts = torch.bincount(labels.long().flatten(), minlength=k).to(torch.float32)
        epochs = obs.local_training.epochs_of(obs.batch_size)
        old = base.objective
        objective = MinibatchFedAvgObjective(
            base.victim, obs, counts=counts, consensus=self.consensus, count_weight=self.count_weight,
            distances=old.distance_names, regularizers=old.regularizer_names, bn_targets=old.bn_targets,
            first_bn_weight=old.first_bn_weight, extra=old.extra)
        n = obs.batch_size
        start = hard_label_start(labels.long().flatten(), k, HARD_START).to(self.device)

        def finish(x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            perms = epoch_permutations(x, epochs, logits)
            soft = aligned(logits.softmax(-1), perms).mean(0)
            return aligned(x, perms).mean(0), soft.clamp_min(1e-12).log()

        base.objective, base.labels = objective, None
        base.label_source = f"{base.label_source} multiset, positions learnt"
        base.batch, base.label_init, base.finish = epochs * n, start.repeat(epochs, 1), finish
        return base


__all__ = ["FedAvgLeakageAttack", "HARD_START", "MinibatchFedAvgObjective", "aligned", "epoch_permutations",
           "hard_label_start"]
