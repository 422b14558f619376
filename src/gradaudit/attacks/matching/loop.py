"""The optimisation loop over a population: Adam steps, the learning-rate schedule, the box, successive halving,
best-iterate tracking and a wall-clock budget.

One iteration evaluates every member's objective gradient in one call (``step``), scores the members by the
selection criterion (:mod:`.tuning`) and records each member's best iterate, takes one Adam step per member
with its own step size (x0.1 at 3/8, 5/8 and 7/8 of the iterations with the ``multistep`` schedule), projects
onto the valid pixel box, and, at a rung of the halving plan, keeps the better half of the candidates (at the
plan's early look, only a decisive leader: :func:`~.tuning.decisive_leader`). Every
candidate's best state is archived when it is pruned or when the loop ends, so callers can score what each
candidate reached (the tuner's selection regret).

With ``time_budget`` the loop runs for that many seconds instead of a number of iterations: the rungs and the
step-size milestones sit at the fractions of the budget an iteration budget would spend there
(:class:`~.tuning.BudgetClock`), so the whole schedule completes in time on any machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..base import ProgressFn
from .population import Population, Tree
from .tuning import BudgetClock, HalvingPlan, candidate_scores, criterion_scores, decisive_leader, prune

#: (theta, const, labels, dist_w, reg_w) -> (grads over the leaves, total [N], aux, rendered x [N, B, ...])
StepFn = Callable[[Tree, Tree, torch.Tensor, torch.Tensor, torch.Tensor],
                  tuple[Tree, torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]]


@dataclass
class LoopSettings:
    iterations: int
    n_candidates: int
    criterion: str = "adaptive"
    strength: list[float] = field(default_factory=list)
    schedule: str = "multistep"
    eta: int = 2
    log_every: int = 10
    time_budget: Optional[float] = None
    project: Optional[Callable[[Tree], Tree]] = None
    progress: Optional[ProgressFn] = None


@dataclass
class Archived:
    """A candidate's best state: images [B, ...], labels, score, the iteration it was reached, when it stopped."""

    x: torch.Tensor
    labels: torch.Tensor
    score: float
    iteration: int
    stopped_at: int
    contrast_restored: bool = False


@dataclass
class LoopResult:
    history: list[tuple[int, float]] = field(default_factory=list)
    iterations: int = 0
    planned: int = 0
    rungs: list[dict[str, Any]] = field(default_factory=list)
    archive: dict[int, Archived] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_by_budget: bool = False
    #: (iteration, {candidate: its best score so far}) at every logged iteration
    trace: list[tuple[int, dict[int, float]]] = field(default_factory=list)


def schedule_scale(it: float, total: int, kind: str) -> float:
    """The step-size factor at iteration ``it``: x0.1 per milestone 3T/8, 5T/8, 7T/8 passed (``multistep``)."""
    if kind == "none" or total < 8:
        return 1.0
    passed = sum(1 for m in (3 * total // 8, 5 * total // 8, 7 * total // 8) if it >= m)
    return 0.1 ** passed


def multistep_scheduler(optimizer: torch.optim.Optimizer, total: int, kind: str = "multistep"):
    """A torch scheduler with :func:`schedule_scale`'s steps (for attacks that use torch's optimisers), or None."""
    if kind == "none" or total < 8:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: schedule_scale(it, total, kind))


def archive_candidates(pop: Population, result: LoopResult, stopped_at: int, only: Optional[set[int]] = None) -> None:
    """Store each (listed) candidate's best member state in ``result.archive``."""
    for c in set(pop.candidate.tolist()):
        if only is not None and c not in only:
            continue
        idx = [i for i, k in enumerate(pop.candidate.tolist()) if k == c]
        best = min(idx, key=lambda i: pop.best_score[i].item())
        if pop.best_x is None:
            continue
        result.archive[c] = Archived(pop.best_x[best].detach().cpu(), pop.best_labels[best].detach().cpu(),
                                     float(pop.best_score[best]), int(pop.best_iteration[best]), stopped_at)


def cut(pop: Population, result: LoopResult, it: int, keep: int, s: LoopSettings, decisive: bool = False) -> None:
    """Archive every candidate's best so far, keep the ``keep`` best candidates' members, record the rung."""
    alive = set(pop.candidate.tolist())
    archive_candidates(pop, result, it)
    survivors = prune(pop, s.n_candidates, keep, s.strength or [0.0] * s.n_candidates, s.criterion)
    rung = {"iteration": it, "kept": survivors, "dropped": sorted(alive - set(survivors))}
    result.rungs.append({**rung, "decisive": True} if decisive else rung)


def run_population(pop: Population, step: StepFn, s: LoopSettings) -> LoopResult:
    """Optimise ``pop`` in place (see the module docstring); returns the history, rungs and archive."""
    t0 = time.perf_counter()
    result = LoopResult()
    budget = s.time_budget
    clock = BudgetClock(budget, s.n_candidates, s.eta) if budget is not None else None
    total = BudgetClock.NOMINAL if clock else max(0, s.iterations)
    plan = clock.plan if clock else HalvingPlan.build(s.n_candidates, total, s.eta)
    level, it, position, looked = 0, 0, 0.0, False
    while position < total:
        grads, _, aux, x = step(pop.theta, pop.const, pop.labels, pop.dist_w, pop.reg_w)
        pop.record(criterion_scores(s.criterion, aux, x), x, it)
        scale = schedule_scale(position, total, s.schedule)
        leaves = pop.optimizer.step(pop.leaves(), grads, scale)
        if s.project is not None:
            leaves = s.project(leaves)
        pop.set_leaves(leaves)
        it += 1
        position = clock.position(time.perf_counter() - t0) if clock else float(it)
        if (it - 1) % s.log_every == 0 or position >= total:
            best = float(aux[0].detach().min())
            result.history.append((it - 1, best))
            per: dict[int, float] = {}
            for c, v in zip(pop.candidate.tolist(), pop.best_score.tolist()):
                per[c] = min(per.get(c, float("inf")), v)
            result.trace.append((it - 1, per))
            if s.progress is not None:  # with a budget: progress in per mille of the budget
                done, of = (it, total) if clock is None else (int(1000 * position / total), 1000)
                s.progress(done, of, best)
        if plan.look and not looked and position >= plan.look and position < total:
            looked = True
            alive = sorted(set(pop.candidate.tolist()))
            if decisive_leader(candidate_scores(pop, s.n_candidates), alive, s.criterion) is not None:
                cut(pop, result, it, 1, s, decisive=True)
                level = len(plan.rungs)  # the contest is over
        if level < len(plan.rungs) and position >= plan.rungs[level] and position < total:
            cut(pop, result, it, plan.keep[level], s)
            level += 1
    if clock is not None:
        total = it
        result.stopped_by_budget = True
    # score the final iterate too (one more evaluation, no step)
    if total > 0:
        _, _, aux, x = step(pop.theta, pop.const, pop.labels, pop.dist_w, pop.reg_w)
        pop.record(criterion_scores(s.criterion, aux, x), x, it)
    archive_candidates(pop, result, it)
    result.iterations, result.planned = it, total
    result.seconds = time.perf_counter() - t0
    return result


__all__ = ["Archived", "LoopResult", "LoopSettings", "StepFn", "archive_candidates", "multistep_scheduler", "run_population",
           "schedule_scale"]
