"""Self-tuning: candidate hyper-parameters, successive halving, and selection from the observation alone.

A fixed recipe is right for no model in particular: the total-variation weight that rebuilds a ConvNet's
image leaves a fresh ResNet-18 at noise, and the reverse. The tuning attack therefore runs K candidate
settings (:class:`~.population.Candidate`: TV weight, step size, distance, initialisation) as one vectorised
population and keeps the best by a *selection criterion* computed from the observation only (never from the
private images; metrics score the result afterwards):

``adaptive`` (the default)
    the unregularised cosine distance d (below) of each candidate's best iterate, after *contrast restoration*:
    batch norm in training mode makes the update (nearly) invariant to the batch's global contrast, so a strong
    total-variation prior flattens the image at almost no cost in d, and neither d nor any other function of
    the update can tell. Each candidate's batch is therefore rescaled to the contrast the data's normalisation
    implies (unit standard deviation in the normalised space) *when the observation cannot tell the
    difference*: d of the rescaled batch within (1 + CONTRAST_TOLERANCE) of the original's (zero padding and
    models without batch norm do see contrast, and then nothing changes; never in the families of
    :data:`NO_CONTRAST_RESTORATION`). Then fit first, prior second: among
    the candidates within (1 + ADMIT) of the lowest d, the weakest prior wins (it distorts the image least;
    the stronger ones buy their slightly lower d by smoothing). When no candidate
    explains the update at all (d_min >= FIT_FAILED, e.g. a fresh ResNet-18 at B = 1, where every candidate
    ends near d = 0.7), the data cannot choose: nothing is rescaled and the *strongest* prior wins, a smooth
    image being the better estimate of an image nobody can see;
``cosine``
    the unregularised global cosine distance between the member's update and the observed one, over every
    parameter tensor (one scale for all members, whatever their own distance or prior);
``heldout``
    the cosine distance on parameter tensors left out of the fit (``holdout`` > 0): an out-of-sample check;
``consensus``
    the mean squared pixel distance of a member's batch to the other members' (batches in label order):
    reconstructions the observation pins down agree, artefacts of a weak fit do not.

Successive halving (Jamieson & Talwalkar 2016; Li et al., Hyperband, 2018) prunes losers early: with K
candidates and L = ceil(log2 K) rungs at T/2^(L+1), ..., T/8, T/4 of the T iterations, half the candidates
survive each rung. For K = 8 this costs 8 T/16 + 4 T/16 + 2 T/8 + 3 T/4 = 1.75 T member-iterations, against 8 T
for running every candidate to the end. (The rungs sat one level later, ending at T/2, until a measurement at
equal wall time: the winner then got only 2/3 of the fixed recipe's iterations with K = 2 and fell 1.4 dB below
it on the ConvNet without BN; with the last rung at T/4 it gets 4/5 of them, and the selection regret stayed at
a median of 0 dB, benchmarks/strongest_attack.py.) A ``time_budget`` (seconds) replaces T: :class:`BudgetClock` places the rungs and the
learning-rate milestones at the fractions of the budget an iteration budget would spend there.

A decisive lead ends the contest early (in the Adam loop; L-BFGS members advance rung by rung): at T/16, when
that comes before the first rung (K = 2 to 4), a candidate whose best score is lower than every other's by a
factor of :data:`DECISIVE` or more keeps the budget alone (under ``adaptive`` only while it fits, d < FIT_FAILED;
a lead that large admits no other candidate, so the rule's pick is the leader). The factor comes from 48 runs
in which both of K = 2 candidates ran to the end (embedded photos and LFW faces; LeNet, ConvNet with and
without BN, FedAvg at B = 4): wherever the T/16 leader differed from the T/4 rung's pick, its lead was at most
1.07x; the ConvNet without BN (leads of 2.2-4.2x), LeNet on faces (1.5-2.2x) and FedAvg (1.2-2.0x, 7 of 8
past 1.4) kept their leader. There the winner used to get 4/5 of the fixed recipe's iterations at equal wall
time, and 0.8 dB went with them under FedAvg.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ...errors import ConfigError, unknown_name
from .population import Candidate, Population

CRITERIA = ("adaptive", "cosine", "heldout", "consensus")
#: ``adaptive``: no candidate fits when the best cosine distance is at least this (cosine similarity <= 0.7)
FIT_FAILED = 0.3
#: ``adaptive``: a contrast the update cannot see: d of the rescaled batch within this factor of the original
CONTRAST_TOLERANCE = 0.2
#: ``adaptive``: candidates within (1 + ADMIT) x the best distance fit about as well as the best
ADMIT = 0.2
#: ``adaptive``: families whose candidates are never contrast-restored. On a trained ResNet-18 (B = 1, d ~ 0.06,
#: so the fit succeeds) the restoration passed the tolerance (d x 1.01-1.07) and cost 5.1 and 2.4 dB on two
#: photos (16.6 -> 11.5, 11.5 -> 9.0), while on the ConvNet with BN it gained +4.9 and +3.0 dB on two of 8
#: photos and lost at most 1.2 (a net +0.75 dB per image): the deep network's padded convolutions see the
#: contrast that the tolerance cannot tell apart from a slightly worse fit
NO_CONTRAST_RESTORATION = ("deep-batch-norm",)

#: the wide grid (``tune="wide"``): total variation in half-decade steps from 1e-4 to 1
WIDE_GRID: dict[str, list[Any]] = {"tv": [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]}

#: the candidates of ``tune="auto"`` by model family (:func:`model_family`). In the study behind them
#: (benchmarks/tuning_study.py: the wide grid run to the end on 8 embedded photos per model, 400 iterations)
#: the best weight was 1e-4 to 1e-3 without batch norm (ConvNet), 3e-3 to 0.1 with a few BN layers (ConvNet:
#: 0.01 and 0.03 within a fraction of a dB of each other once the contrast is restored) and the largest on a
#: network with many (a fresh ResNet-18, whose fit fails: d ~ 0.7); LeNet (no BN, sigmoids) wanted 0.1 to 0.3
#: where the ConvNet without BN wanted 1e-3 (and LeNet wants 1e-3 on LFW faces: a sigmoid family of 0.03 and
#: 0.1 left it at 18.4 / 30.4 dB where 1e-3 reached 30.1 / 40.5, so LeNet stays in the plain family). At equal
#: wall time every extra candidate costs the winner iterations (benchmarks/strongest_attack.py: with all 8
#: weights the tuned attack fell 2 dB below the fixed preset on the ConvNet), so each family gets two weights.
FAMILY_GRIDS: dict[str, dict[str, list[Any]]] = {
    "plain": {"tv": [1e-3, 0.1]},
    "batch-norm": {"tv": [1e-2, 3e-2]},
    "deep-batch-norm": {"tv": [0.3, 1.0]},
}
#: a decisive lead at the early look: the best candidate's score at most 1/DECISIVE of every other's
DECISIVE = 1.4
#: the early look sits at T / EARLY_LOOK (only when that is before the first rung)
EARLY_LOOK = 16
#: more batch-norm layers than this make a model "deep" (the ConvNet has 4, the CIFAR ResNet-18 20)
DEEP_BN_LAYERS = 8


def model_family(victim) -> str:
    """The tuning family of the victim the observation names: ``plain`` (no batch norm), ``batch-norm`` or
    ``deep-batch-norm`` (more than :data:`DEEP_BN_LAYERS` BN layers)."""
    n = len(victim.bn_layers)
    return "plain" if n == 0 else ("deep-batch-norm" if n > DEEP_BN_LAYERS else "batch-norm")


def candidates_from(base_lr: float, base_regularizers: Mapping[str, float], base_distance: str, base_init: str,
                    grid: Mapping[str, Sequence[Any]] | None = None,
                    explicit: Sequence[Mapping[str, Any]] | None = None) -> list[Candidate]:
    """The candidate list: ``explicit`` settings (each overriding the base), else the product of ``grid``
    (keys ``lr``, ``distance``, ``init`` or a regulariser name), else the single base setting."""
    base = {"lr": float(base_lr), "distance": base_distance, "init": base_init}
    regs = dict(base_regularizers)
    settings: list[dict[str, Any]]
    if explicit:
        settings = [dict(e) for e in explicit]
    elif grid:
        keys = list(grid)
        for k in keys:
            if not isinstance(grid[k], (list, tuple)) or not grid[k]:
                raise ConfigError(f"tuning grid '{k}' must be a non-empty list of values")
        settings = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    else:
        settings = [{}]
    out = []
    for s in settings:
        cand_regs = dict(regs)
        cand_regs.update({k: float(v) for k, v in (s.get("regularizers") or {}).items()})
        for k, v in s.items():
            if k not in ("lr", "distance", "init", "regularizers"):
                cand_regs[k] = float(v)
        lr = float(s.get("lr", base["lr"]))
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"tuning candidate lr must be a finite number > 0, got {lr}")
        if any(not (math.isfinite(v) and v >= 0) for v in cand_regs.values()):
            raise ConfigError(f"tuning candidate weights must be finite and >= 0, got {cand_regs}")
        out.append(Candidate(lr=lr, regularizers=tuple(sorted(cand_regs.items())),
                             distance=str(s.get("distance", base["distance"])), init=str(s.get("init", base["init"]))))
    unique = list(dict.fromkeys(out))
    return unique


@dataclass(frozen=True)
class HalvingPlan:
    """Rungs of successive halving: after ``rungs[i]`` iterations, ``keep[i]`` candidates remain; at ``look``
    (0: none) a decisive leader may end the contest early (:func:`decisive_leader`)."""

    iterations: int
    rungs: tuple[int, ...]
    keep: tuple[int, ...]
    look: int = 0

    @classmethod
    def build(cls, candidates: int, iterations: int, eta: int = 2) -> "HalvingPlan":
        if candidates <= 1 or iterations < 2 or eta <= 1:  # eta = 1: no pruning, every candidate runs to the end
            return cls(iterations, (), ())
        levels = math.ceil(math.log(candidates, eta) - 1e-9)
        rungs, keep, left = [], [], candidates
        for i in range(1, levels + 1):
            at = max(1, iterations // eta ** (levels + 2 - i))
            left = max(1, math.ceil(left / eta))
            if rungs and at <= rungs[-1]:
                at = rungs[-1] + 1
            if at >= iterations:
                break
            rungs.append(at)
            keep.append(left)
        look = iterations // EARLY_LOOK
        return cls(iterations, tuple(rungs), tuple(keep), look if rungs and 1 <= look < rungs[0] else 0)

    def alive_at(self, iteration: int, candidates: int) -> int:
        """How many candidates the plan keeps after ``iteration`` iterations."""
        left = candidates
        for at, k in zip(self.rungs, self.keep):
            if iteration >= at:
                left = k
        return left

    def cost(self, candidates: int) -> float:
        """Member-iterations per restart, in units of one candidate's full run (K = 8: 2.5)."""
        total, start, alive = 0.0, 0, candidates
        for at, k in zip(self.rungs, self.keep):
            total += alive * (at - start)
            start, alive = at, k
        total += alive * (self.iterations - start)
        return total / max(1, self.iterations)


class BudgetClock:
    """Maps elapsed wall-clock time to a position in a nominal halving run, so a time budget is spent the way
    an iteration budget would be: the fraction of the budget used is the fraction of member-iterations the
    plan of T iterations has run. Rungs and learning-rate milestones are placed by that position, so the whole
    schedule always completes within the budget, however fast the machine, and nothing is extrapolated from
    speed measurements. (K = 8: rungs at 29, 43 and 57 % of the budget; the x0.1 steps at 64, 79 and 93 %.)"""

    NOMINAL = 1 << 16

    def __init__(self, budget_s: float, candidates: int, eta: int) -> None:
        self.budget = float(budget_s)
        self.plan = HalvingPlan.build(candidates, self.NOMINAL, eta)
        points, alive = [0], [candidates]
        for r, k in zip(self.plan.rungs, self.plan.keep):
            points.append(r)
            alive.append(k)
        points.append(self.NOMINAL)
        self._points, self._alive = points, alive  # alive[i] members-per-restart on [points[i], points[i+1])
        self._cum = [0.0]
        for i in range(len(points) - 1):
            self._cum.append(self._cum[-1] + alive[i] * (points[i + 1] - points[i]))

    def position(self, elapsed_s: float) -> float:
        """The nominal iteration (0 .. NOMINAL) that ``elapsed_s`` of the budget corresponds to."""
        target = min(1.0, max(0.0, elapsed_s / self.budget)) * self._cum[-1]
        for i in range(len(self._points) - 1):
            if target <= self._cum[i + 1]:
                return self._points[i] + (target - self._cum[i]) / self._alive[i]
        return float(self.NOMINAL)


# -------------------------------------------------------------------------------------------- criteria
def consensus_scores(x: torch.Tensor) -> torch.Tensor:
    """[N] mean squared distance of each member's batch to every other member's (0 for a single member)."""
    n = x.shape[0]
    if n < 2:
        return torch.zeros(n)
    flat = x.detach().reshape(n, -1).to(torch.float64)
    d = torch.cdist(flat, flat).pow(2) / flat.shape[1]
    return (d.sum(1) / (n - 1)).float().cpu()


def criterion_scores(name: str, aux: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """[N] scores of one selection criterion (lower is better) from a step's aux outputs and rendered batches."""
    if name in ("cosine", "adaptive"):
        return aux[1].detach().float().cpu()
    if name == "heldout":
        return aux[2].detach().float().cpu()
    if name == "consensus":
        return consensus_scores(x)
    raise unknown_name("selection criterion", name, CRITERIA)


def candidate_scores(pop: Population, n_candidates: int) -> torch.Tensor:
    """[K] best score of each candidate over its surviving members (inf for pruned candidates)."""
    out = torch.full((n_candidates,), float("inf"))
    for c, s in zip(pop.candidate.tolist(), pop.best_score.tolist()):
        out[c] = min(out[c].item(), s)
    return out


def rank_candidates(scores: torch.Tensor, strength: Sequence[float], criterion: str) -> list[int]:
    """Candidates best first: by score, or for ``adaptive`` by the rule of the module docstring (repeatedly its
    pick among those left); candidates without a finite score come last."""
    finite = [k for k in range(len(scores)) if math.isfinite(float(scores[k]))]
    if not finite:
        return list(range(len(scores)))
    rest = [k for k in range(len(scores)) if k not in finite]
    if criterion != "adaptive":
        return sorted(finite, key=lambda k: (float(scores[k]), k)) + rest
    if min(float(scores[k]) for k in finite) >= FIT_FAILED:  # nothing fits: the strongest prior first
        return sorted(finite, key=lambda k: (-strength[k], float(scores[k]), k)) + rest
    order, left = [], set(finite)
    while left:  # fit first, then the weakest prior among those that fit about as well
        best = min(float(scores[k]) for k in left)
        admitted = [k for k in left if float(scores[k]) <= best * (1 + ADMIT)]
        pick = min(admitted, key=lambda k: (strength[k], float(scores[k]), k))
        order.append(pick)
        left.remove(pick)
    return order + rest


def decisive_leader(scores: torch.Tensor, alive: Sequence[int], criterion: str) -> int | None:
    """The candidate among ``alive`` whose score (lower is better) is at most 1/:data:`DECISIVE` of every other
    alive candidate's, or None (also under ``adaptive`` while nothing fits: there the strongest prior wins)."""
    ranked = sorted((float(scores[k]), k) for k in alive)
    if len(ranked) < 2 or not math.isfinite(ranked[0][0]) or ranked[0][0] < 0:
        return None
    (best, leader), (second, _) = ranked[0], ranked[1]
    if criterion == "adaptive" and best >= FIT_FAILED:
        return None
    return leader if second >= DECISIVE * best else None


def prune(pop: Population, n_candidates: int, keep: int, strength: Sequence[float],
          criterion: str) -> list[int]:
    """Keep the members of the ``keep`` best candidates (:func:`rank_candidates` over their best scores so
    far); return the survivors."""
    scores = candidate_scores(pop, n_candidates)
    alive = set(pop.candidate.tolist())
    ranked = [k for k in rank_candidates(scores, strength, criterion) if k in alive]
    survivors = sorted(ranked[:keep])
    index = torch.tensor([i for i, c in enumerate(pop.candidate.tolist()) if c in survivors], dtype=torch.long)
    pop.keep(index)
    return survivors


def prior_strength(candidates: Sequence[Candidate]) -> list[float]:
    """How strongly each candidate's priors pull: the sum of its regulariser weights."""
    return [float(sum(c.weights.values())) for c in candidates]


def restore_contrast(x: torch.Tensor, target_std: float = 1.0) -> torch.Tensor:
    """A normalised batch [..., B, C, H, W] rescaled about its per-channel means to a pooled standard deviation
    of ``target_std`` (1: the contrast of the data the normalisation was computed on)."""
    dims = tuple(range(x.dim() - 4, x.dim()))
    mu = x.mean(dim=(dims[0], dims[2], dims[3]), keepdim=True)
    centred = x - mu
    sd = centred.pow(2).mean(dim=dims, keepdim=True).sqrt().clamp_min(1e-6)
    return mu + centred / sd * target_std


__all__ = ["ADMIT", "CONTRAST_TOLERANCE", "CRITERIA", "DECISIVE", "DEEP_BN_LAYERS", "EARLY_LOOK", "FAMILY_GRIDS",
           "FIT_FAILED", "NO_CONTRAST_RESTORATION", "WIDE_GRID", "BudgetClock", "HalvingPlan", "candidate_scores",
           "candidates_from", "consensus_scores", "criterion_scores", "decisive_leader", "model_family",
           "prior_strength", "prune", "rank_candidates", "restore_contrast"]
