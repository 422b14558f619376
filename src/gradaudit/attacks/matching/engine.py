"""The gradient-matching engine (methods.md section 2): an attack composed of public parts.

    min_x  D(u(x, y), u*) + sum_r lambda_r R_r(x)

over a dummy batch x (and, for DLG's joint variant, soft labels), where u(x, y) is the update the candidate
batch would produce under the observed protocol (the FedSGD mean gradient, or theta_0 - theta_K from K
unrolled local SGD steps), D a distance from :mod:`.distances` and R_r the regularizers of
:mod:`.regularizers`. The parts:

* :class:`~.objective.MatchingObjective` - the objective, with per-member weights;
* :class:`~.population.Population` - every (candidate, restart) member's state, stacked;
* :func:`~.loop.run_population` - the Adam loop: schedule, box, successive halving, best iterates, budget;
* :mod:`.tuning` - the candidate grid and the observation-only selection criteria.

Members are optimised together: the objective of one member is a pure function of its batch, and
``torch.func.vmap(torch.func.grad_and_value(objective))`` evaluates all N members in one vectorised call
(gradient of a gradient, batched). Adam (optionally on the sign of the gradient, as Inverting Gradients does)
is elementwise, so one update over the stacked [N, B, C, H, W] tensor is N independent optimisations.
L-BFGS couples its coordinates through its line search, so its members run one after another.

``tune="off"`` is the fixed recipe: one candidate (the preset's settings) with ``restarts`` restarts; the
restart with the lowest final matching distance is kept and its last iterate returned. ``tune="auto"`` runs a
candidate grid (the model family's, :data:`~.tuning.FAMILY_GRIDS`; ``"wide"``: :data:`~.tuning.WIDE_GRID`; or
``grid`` / ``candidates``) under successive halving, selects
by the observation-only criterion ``select`` and returns the winner's best iterate.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Callable, Literal, Optional

import torch
from annotated_types import Ge, Gt, Lt
from torch.func import grad_and_value, vmap

from ...errors import ConfigError, unknown_name
from ...threat.observation import Observation
from ..base import Attack, ProgressFn, Reconstruction
from .distances import DISTANCES
from .labels import recover_labels
from .loop import LoopResult, LoopSettings, archive_candidates, run_population, schedule_scale
from .objective import ExtraTerm, MatchingObjective, autograd_param_grad, func_param_grad, holdout_names
from .population import INITS, Candidate, MemberAdam, Population, initial_pixels, members
from .regularizers import REGULARIZERS
from .tuning import (CONTRAST_TOLERANCE, CRITERIA, FAMILY_GRIDS, FIT_FAILED, NO_CONTRAST_RESTORATION, WIDE_GRID,
                     HalvingPlan, candidates_from, criterion_scores, model_family, prior_strength, prune,
                     rank_candidates, restore_contrast)
from .victim import FunctionalVictim

LabelStrategy = Literal["auto", "given", "recover", "joint"]
TUNE_MODES = ("off", "auto", "wide")
#: builds an extra objective term for an observation's functional victim (e.g. the feature-matching term)
TermFactory = Callable[[Observation, FunctionalVictim], ExtraTerm]


@dataclass
class MatchingConfig:
    """Hyper-parameters of a gradient-matching attack (validated on construction).

    Attributes:
        distance: "l2", "cosine" or "reweighted-cosine".
        regularizers: name -> weight (names from REGULARIZERS: tv, tv-squared, bn, l2).
        optimizer: "adam" or "lbfgs".
        lr: step size. signed: Adam on sign(grad) (Inverting Gradients).
        iterations: optimiser steps per restart. restarts: independent random initialisations.
        schedule: "multistep" (x0.1 at 3/8, 5/8, 7/8 of the iterations) or "none".
        boxed: clamp images to the valid pixel range after every step.
        init: "randn" (standard normal in normalised space), "rand" (uniform pixels), "zeros" (the dataset's mean
            colour) or "smooth" (a standard normal at 1/4 resolution, bilinearly upsampled: low frequencies only).
        labels: "auto" (given when observed, else recovered), "given", "recover" (iDLG / counting), or
            "joint" (DLG: optimise soft labels with the images).
        first_bn_weight: weight of the first BN layer in the "bn" prior.
        vectorize: run the population through vmap (falls back to a loop when False).
        parameterization: what is optimised (:mod:`gradaudit.attacks.priors.parameterization`): "pixels"
            (the images themselves, the default), "latent" (GI-z), "generator" (GI-w), "gias" or "dip".
        generator: the prior's checkpoint (NAME / NAME.json / NAME.safetensors, or ``package.module:factory``)
            for "latent", "generator" and "gias".
        latent_iterations, latent_lr: GIAS's first phase (latent search with the generator frozen).
        allow_train_overlap: let callers that know the evaluation images use a prior trained on them
            (:func:`gradaudit.attacks.priors.check_held_out`); the attack itself never sees those images.
        tune: "off" (the fixed recipe above), "auto" (self-tuning over the candidates of the victim's family,
            :data:`~.tuning.FAMILY_GRIDS`) or "wide" (over :data:`~.tuning.WIDE_GRID`); see :mod:`.tuning`.
        grid: the tuning grid, name -> values (``lr``, ``distance``, ``init`` or a regulariser name); the
            product of the lists is the candidate set (default: the model family's, or the wide grid).
        candidates: explicit candidate settings (each a dict overriding the base), instead of a grid.
        select: the observation-only selection criterion: "adaptive" (fit first, then the weakest prior; the
            strongest when nothing fits), "cosine", "heldout" or "consensus" (see :mod:`.tuning`).
        eta: successive halving keeps 1/eta of the candidates at each rung (1: no pruning).
        holdout: fraction of parameter tensors left out of the fit (for ``select="heldout"``).
        time_budget: wall-clock seconds for the whole attack (tuning included); the iteration count is then
            planned from the measured speed (``iterations`` is only the starting guess).
    """

    distance: str = "cosine"
    regularizers: dict[str, Annotated[float, Ge(0)]] = field(default_factory=lambda: {"tv": 0.05})
    optimizer: str = "adam"
    lr: Annotated[float, Gt(0)] = 0.1
    signed: bool = True
    iterations: Annotated[int, Ge(0)] = 1000
    restarts: Annotated[int, Ge(1)] = 1
    schedule: str = "multistep"
    boxed: bool = True
    init: str = "randn"
    labels: str = "auto"
    first_bn_weight: Annotated[float, Ge(0)] = 10.0
    lbfgs_inner_steps: Annotated[int, Ge(1)] = 1
    vectorize: bool = True
    log_every: Annotated[int, Ge(1)] = 10
    parameterization: str = "pixels"
    generator: Optional[str] = None
    latent_iterations: Annotated[int, Ge(0)] = 0
    latent_lr: Annotated[float, Gt(0)] = 0.03
    allow_train_overlap: bool = False
    tune: str = "off"
    grid: Optional[dict[str, list]] = None
    candidates: Optional[list[dict]] = None
    select: str = "adaptive"
    eta: Annotated[int, Ge(1)] = 2
    holdout: Annotated[float, Ge(0), Lt(1)] = 0.0
    time_budget: Optional[Annotated[float, Gt(0)]] = None

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise unknown_name("distance", self.distance, DISTANCES)
        for name, weight in self.regularizers.items():
            if name not in REGULARIZERS:
                raise unknown_name("regularizer", name, REGULARIZERS)
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"regularizer weight for '{name}' must be a finite number >= 0, got {weight}")
        if self.optimizer not in ("adam", "lbfgs"):
            raise unknown_name("optimizer", self.optimizer, ("adam", "lbfgs"))
        if self.schedule not in ("multistep", "none"):
            raise unknown_name("schedule", self.schedule, ("multistep", "none"))
        if self.init not in INITS:
            raise unknown_name("init", self.init, INITS)
        if self.labels not in ("auto", "given", "recover", "joint"):
            raise unknown_name("label strategy", self.labels, ("auto", "given", "recover", "joint"))
        if self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        if self.restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {self.restarts}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if not (isinstance(self.first_bn_weight, (int, float)) and math.isfinite(self.first_bn_weight)
                and self.first_bn_weight >= 0):
            raise ConfigError(f"first_bn_weight must be a finite number >= 0, got {self.first_bn_weight}")
        if self.lbfgs_inner_steps < 1 or self.log_every < 1:
            raise ConfigError("lbfgs_inner_steps and log_every must be >= 1")
        self._check_tuning()
        self._check_parameterization()

    def _check_parameterization(self) -> None:
        from ..priors.parameterization import PARAMETERIZATIONS

        kind = self.parameterization
        if kind not in PARAMETERIZATIONS:
            raise unknown_name("parameterization", kind, PARAMETERIZATIONS)
        if "z-norm" in self.regularizers and kind not in ("latent", "gias"):
            raise ConfigError(f"the 'z-norm' regularizer needs a latent to penalise (parameterization 'latent' "
                              f"or 'gias'), not '{kind}'")
        if kind == "pixels":
            return
        if self.optimizer != "adam":
            raise ConfigError(f"parameterization '{kind}' runs with optimizer 'adam' only, got '{self.optimizer}'")
        if PARAMETERIZATIONS[kind].needs_generator and not self.generator:
            raise ConfigError(f"parameterization '{kind}' needs a generator: generator=PATH of a checkpoint "
                              f"(train one with 'gradaudit prior train') or package.module:factory")
        if self.latent_iterations < 0 or not (math.isfinite(self.latent_lr) and self.latent_lr > 0):
            raise ConfigError("latent_iterations must be >= 0 and latent_lr > 0")

    def _check_tuning(self) -> None:
        if self.tune not in TUNE_MODES:
            raise unknown_name("tune mode", self.tune, TUNE_MODES)
        if self.select not in CRITERIA:
            raise unknown_name("selection criterion", self.select, CRITERIA)
        if isinstance(self.eta, bool) or not isinstance(self.eta, int) or self.eta < 1:
            raise ConfigError(f"eta must be an integer >= 1, got {self.eta!r}")
        if not (isinstance(self.holdout, (int, float)) and 0 <= self.holdout < 1):
            raise ConfigError(f"holdout must be in [0, 1), got {self.holdout!r}")
        if self.select == "heldout" and self.holdout == 0:
            raise ConfigError("select='heldout' needs tensors held out of the fit: set holdout > 0 (e.g. 0.2)")
        if self.time_budget is not None and not (isinstance(self.time_budget, (int, float)) and
                                                 math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ConfigError(f"time_budget must be a finite number of seconds > 0, got {self.time_budget!r}")
        if self.tune != "off" and self.parameterization != "pixels":
            raise ConfigError(f"tuning runs on pixels; parameterization '{self.parameterization}' runs its fixed "
                              "recipe (set tune to off)")
        if self.grid is not None and not isinstance(self.grid, dict):
            raise ConfigError(f"grid must map hyper-parameter names to lists of values, got {self.grid!r}")
        for key in (self.grid or {}):
            if key not in ("lr", "distance", "init") and key not in REGULARIZERS:
                raise ConfigError(f"tuning grid key '{key}' is not lr, distance, init or a regularizer "
                                  f"({', '.join(REGULARIZERS)})")
        for c in self.candidate_settings():
            if c.distance not in DISTANCES:
                raise unknown_name("distance", c.distance, DISTANCES)
            if c.init not in INITS:
                raise unknown_name("init", c.init, INITS)
            for name in c.weights:
                if name not in REGULARIZERS:
                    raise unknown_name("regularizer", name, REGULARIZERS)

    def candidate_settings(self, family: str | None = None) -> list[Candidate]:
        """The candidates this configuration runs: the preset alone (``tune="off"``), the explicit ``grid`` /
        ``candidates``, the wide grid (``"wide"``), or the grid of the victim's ``family`` (``"auto"``; without
        a family, for checks before any observation, the wide grid)."""
        if self.tune == "off":
            return candidates_from(self.lr, self.regularizers, self.distance, self.init)
        if self.grid or self.candidates:
            grid = self.grid
        elif self.tune == "auto" and family is not None:
            grid = FAMILY_GRIDS[family]
        else:
            grid = WIDE_GRID
        return candidates_from(self.lr, self.regularizers, self.distance, self.init, grid=grid,
                               explicit=self.candidates)


@dataclass
class MatchingSetup:
    """Everything an attack derives from the observation before it optimises (public: other attacks compose it).

    ``observation`` is on the attack's device; ``labels`` are None when learnt jointly (DLG's soft labels);
    ``lo`` / ``hi`` bound the normalised pixels (the valid box)."""

    observation: Observation
    victim: FunctionalVictim
    labels: torch.Tensor | None
    label_source: str
    bn_targets: list
    objective: MatchingObjective
    lo: torch.Tensor
    hi: torch.Tensor
    extra_regularizers: dict[str, float] = field(default_factory=dict)
    #: the candidate settings this attack runs on this observation
    candidates: list[Candidate] = field(default_factory=list)
    family: str = "plain"
    #: image variables per member (default: the observation's batch size; attacks that optimise several
    #: copies of the batch, e.g. one per FedAvg epoch, say how many)
    batch: int | None = None
    #: starting logits [batch, K] of jointly learnt soft labels (default: a standard normal draw)
    label_init: torch.Tensor | None = None
    #: (images [batch, ...], labels) -> (the reconstructed batch [B, ...], its labels), applied to what the
    #: attack returns (e.g. the consensus of the epoch copies); default: as optimised
    finish: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    def member_regularizers(self, candidate: Candidate) -> dict[str, float]:
        """A candidate's regulariser weights with the attack's extra ones (:meth:`~GradientMatchingAttack.
        extra_regularizers`)."""
        return {**candidate.weights, **self.extra_regularizers}


def attack_labels(obs: Observation, victim: FunctionalVictim, strategy: str,
                  device: torch.device) -> tuple[torch.Tensor | None, str]:
    """The labels an attack uses: given (when the observation has them), recovered (iDLG / counting), or None
    with ``"joint"`` (optimised with the images)."""
    if strategy == "joint":
        return None, "joint"
    if strategy in ("auto", "given") and obs.labels is not None:
        return obs.labels.to(device), "given"
    if strategy == "given":
        raise ConfigError("label strategy 'given' but the observation does not include labels "
                          "(threat model: labels unknown); use 'auto' or 'recover'")
    labels, method = recover_labels(obs, victim)
    return labels.to(device), method


def bn_targets_for(obs: Observation, victim: FunctionalVictim, device: torch.device) -> list:
    """Targets of the ``bn`` prior: the private batch's statistics when granted, else the running statistics
    the server sent (ConfigError when the model has no BN layer or neither is available)."""
    if not victim.bn_layers:
        raise ConfigError(f"the 'bn' prior needs batch-norm layers; model '{obs.model.name}' has none")
    if obs.bn_statistics is not None:
        return [(m.to(device), v.to(device)) for m, v in obs.bn_statistics]
    running = victim.running_statistics(obs)
    if not running:
        raise ConfigError("the 'bn' prior needs the private batch's BN statistics (threat model) or the "
                          "model's running statistics in the observation; neither is present")
    return running


def pixel_box(obs: Observation, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid pixel range [0, 1] in the model's normalised space, per channel ([C, 1, 1] each)."""
    mean = torch.tensor(obs.data.mean, device=device).view(-1, 1, 1)
    std = torch.tensor(obs.data.std, device=device).view(-1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def to_pixels(x: torch.Tensor, obs: Observation) -> torch.Tensor:
    """Normalised images [..., C, H, W] back to pixels in [0, 1] (CPU)."""
    mean = torch.tensor(obs.data.mean, device=x.device).view(-1, 1, 1)
    std = torch.tensor(obs.data.std, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1).detach().cpu()


#: above this many model parameters the members run one after another: measured on 2 CPU cores, vmap over 8
#: ResNet-18 members (11.2 M parameters) cost 266 ms per member-iteration against 161 ms in a loop, while it
#: makes the ConvNet (0.15 M) 1.6x faster (10 against 16 ms)
VMAP_MAX_PARAMETERS = 2_000_000
#: below this many members the loop of plain autograd steps is at least as fast as vmap: per step, 1 thread /
#: 2 threads, loop against vmap, LeNet 3.2 / 3.0 ms against 6.8 / 6.2 for one member and 6.5 / 6.3 against
#: 8.6 / 7.0 for two, ConvNet (BN) 16.6 / 12.1 against 24.7 / 19.5 for one and 33.5 / 25.2 against 36.9 / 27.4
#: for two; from four members vmap wins on LeNet (8.6 against 14.5 ms) and the ConvNet without BN
VMAP_MIN_MEMBERS = 3


def should_vectorize(victim: FunctionalVictim, members_: int, allowed: bool) -> bool:
    """vmap the population when allowed, with at least :data:`VMAP_MIN_MEMBERS` members, on a model small
    enough to gain from it."""
    size = sum(p.numel() for p in victim.params.values())
    return allowed and members_ >= VMAP_MIN_MEMBERS and size <= VMAP_MAX_PARAMETERS


def population_step(objective: MatchingObjective, joint: bool, victim: FunctionalVictim, allowed: bool):
    """The loop's step for a population whose size shrinks under successive halving: vmap while
    :func:`should_vectorize` says it pays for the members alive at that call, plain autograd otherwise (the
    lone survivor of a halving run used to stay on vmap: 1.4x slower per iteration on the ConvNet without BN,
    1.6x with BN, 2.1x on LeNet, one thread)."""
    vec = member_step(objective, joint, vectorize=True)
    loop = member_step(objective, joint, vectorize=False)

    def step(theta, const, labels, dist_w, reg_w):
        use = vec if should_vectorize(victim, labels.shape[0], allowed) else loop
        return use(theta, const, labels, dist_w, reg_w)
    return step


def member_step(objective: MatchingObjective, joint: bool, vectorize: bool):
    """The loop's step over pixel members: (grads, total, aux, x) for all N members at once (vmap), or one
    after another with plain autograd (``vectorize=False``; the same numbers)."""
    def one(theta, lab, a, w, param_grad=func_param_grad):
        total, aux = objective(theta["x"], lab, a, w, param_grad)
        return total, aux

    if vectorize:
        argnums = (0, 1) if joint else 0
        vstep = vmap(grad_and_value(one, argnums=argnums, has_aux=True))

        def step(theta, const, labels, dist_w, reg_w):
            grads, (total, aux) = vstep(theta, labels, dist_w, reg_w)
            g, gl = grads if joint else (grads, None)
            if joint:
                g = {**g, "__labels__": gl}
            return g, total, aux, theta["x"]
        return step

    def step(theta, const, labels, dist_w, reg_w):
        outs = []
        for n in range(labels.shape[0]):
            x = theta["x"][n].detach().requires_grad_(True)
            lab = labels[n].detach()
            leaves = [x] + ([lab.requires_grad_(True)] if joint else [])
            with torch.enable_grad():
                total, aux = one({"x": x}, lab, dist_w[n], reg_w[n], autograd_param_grad)
                grads = torch.autograd.grad(total, leaves)
            outs.append((grads, total.detach(), tuple(a.detach() for a in aux)))
        g = {"x": torch.stack([o[0][0] for o in outs])}
        if joint:
            g["__labels__"] = torch.stack([o[0][1] for o in outs])
        total = torch.stack([o[1] for o in outs])
        aux = tuple(torch.stack([o[2][i] for o in outs]) for i in range(3))
        return g, total, aux, theta["x"]
    return step


class GradientMatchingAttack(Attack):
    """Optimisation-based gradient inversion with pluggable distance, priors, optimiser, label recovery and
    self-tuning (see the module docstring and :class:`MatchingConfig`).

    Example::

        attack = GradientMatchingAttack(distance="cosine", regularizers={"tv": 1e-2}, iterations=400)
        reconstruction = attack.reconstruct(observation)   # images [B, C, H, W] in [0, 1]
    """

    name = "gradient-matching"

    def __init__(self, config: MatchingConfig | None = None, *, device: str | torch.device = "cpu",
                 seed: int = 0, name: str | None = None, **overrides) -> None:
        base = asdict(config) if config is not None else {}
        base.update(overrides)
        self.config = MatchingConfig(**base)
        self.device = torch.device(device)
        self.seed = seed
        if name:
            self.name = name

    # ----------------------------------------------------------------------------------------- set-up
    def objective_terms(self, observation: Observation, victim: FunctionalVictim) -> list[ExtraTerm]:
        """Extra terms of the objective (none here; attacks built on the engine add theirs)."""
        return []

    def extra_regularizers(self, observation: Observation, victim: FunctionalVictim) -> dict[str, float]:
        """Regularisers (name -> weight) every member adds to its candidate's (none here; attacks built on the
        engine add theirs, e.g. feature-matching's BN prior)."""
        return {}

    def setup(self, observation: Observation) -> MatchingSetup:
        """Labels, BN targets, the objective and the pixel box for ``observation`` (on the attack's device)."""
        cfg = self.config
        obs = observation.to(self.device)
        victim = FunctionalVictim(obs, self.device)
        labels, label_source = attack_labels(obs, victim, cfg.labels, self.device)
        extra = self.extra_regularizers(obs, victim)
        family = model_family(victim)
        candidates = cfg.candidate_settings(family)
        regs: list[str] = []
        for c in candidates:
            regs += [n for n, _ in c.regularizers if n not in regs]
        regs += [n for n in extra if n not in regs]
        bn = bn_targets_for(obs, victim, self.device) if "bn" in regs else []
        distances = list(dict.fromkeys(c.distance for c in candidates))
        objective = MatchingObjective(victim, obs, distances=distances, regularizers=regs, bn_targets=bn,
                                      first_bn_weight=cfg.first_bn_weight,
                                      holdout=holdout_names(victim.names, cfg.holdout),
                                      extra=self.objective_terms(obs, victim))
        lo, hi = pixel_box(obs, self.device)
        return MatchingSetup(obs, victim, labels, label_source, bn, objective, lo, hi, extra, candidates, family)

    # ---------------------------------------------------------------------------------------- attack
    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        cfg = self.config
        if cfg.parameterization != "pixels":  # generative priors (seed 001): optimise P(theta), not pixels
            from ..priors.attack import reconstruct_with_prior

            return reconstruct_with_prior(self, observation, progress)
        t0 = time.perf_counter()
        s = self.setup(observation)
        candidates = s.candidates
        if cfg.optimizer == "adam":
            pop, result = self._run_adam(s, candidates, progress)
        else:
            pop, result = self._run_lbfgs(s, candidates, progress)
        return self._result(s, candidates, pop, result, time.perf_counter() - t0)

    def _population(self, s: MatchingSetup, candidates: list[Candidate]) -> Population:
        cfg, obs = self.config, s.observation
        R, B = cfg.restarts, s.batch or obs.batch_size
        c, h, w = obs.model.input_shape
        gen = torch.Generator().manual_seed(self.seed)
        x = initial_pixels(candidates, R, (B, c, h, w), self.seed, s.lo, s.hi, gen).to(self.device)
        cand, rest = members(candidates, R)
        joint = s.labels is None
        if joint and s.label_init is not None:
            labels = s.label_init.to(self.device, torch.float32).expand(len(cand), B, -1).contiguous()
        elif joint:
            labels = torch.randn(R, B, obs.model.num_classes, generator=gen).to(self.device)[rest.to(self.device)]
        else:
            labels = s.labels.view(1, B).expand(len(cand), B).contiguous()
        weights = [s.objective.weights(candidates[k].distance, s.member_regularizers(candidates[k]))
                   for k in cand.tolist()]
        dist_w = torch.stack([a for a, _ in weights])
        reg_w = torch.stack([w for _, w in weights])
        lr = torch.tensor([candidates[k].lr for k in cand.tolist()])
        leaves = {"x": x, **({"__labels__": labels} if joint else {})}
        return Population({"x": x}, {}, labels, joint, dist_w, reg_w, cand, rest,
                          MemberAdam(leaves, lr, signed=cfg.signed))

    def _run_adam(self, s: MatchingSetup, candidates: list[Candidate],
                  progress: ProgressFn | None) -> tuple[Population, LoopResult]:
        cfg = self.config
        pop = self._population(s, candidates)
        lo, hi = s.lo, s.hi
        project = (lambda leaves: {**leaves, "x": torch.max(torch.min(leaves["x"], hi), lo)}) if cfg.boxed else None
        step = population_step(s.objective, pop.joint, s.victim, cfg.vectorize)
        settings = LoopSettings(iterations=cfg.iterations, n_candidates=len(candidates), criterion=cfg.select,
                                strength=prior_strength(candidates), schedule=cfg.schedule, eta=cfg.eta, log_every=cfg.log_every,
                                time_budget=cfg.time_budget, project=project, progress=progress)
        return pop, run_population(pop, step, settings)

    def _run_lbfgs(self, s: MatchingSetup, candidates: list[Candidate],
                   progress: ProgressFn | None) -> tuple[Population, LoopResult]:
        """L-BFGS couples coordinates through its line search, so members run one after another, each with its
        own optimiser; with several candidates they advance rung by rung of the halving plan (each rung: every
        surviving member runs to the rung, then the worse half of the candidates is dropped)."""
        cfg = self.config
        pop = self._population(s, candidates)
        one = member_step(s.objective, pop.joint, vectorize=False)
        result, t0 = LoopResult(), time.perf_counter()
        its = cfg.iterations
        plan = HalvingPlan.build(len(candidates), its, cfg.eta)
        states = [self._lbfgs_member(pop, n, candidates, one) for n in range(pop.size)]
        done = [0] * pop.size
        stops = list(plan.rungs) + [its]
        total_work = max(1, plan.cost(len(candidates)) * its * cfg.restarts)
        work = 0
        for level, stop in enumerate(stops):
            for n in range(pop.size):
                member = states[n]
                while done[n] < stop and member["finite"]:
                    member["opt"].step(member["closure"])
                    if cfg.boxed:
                        with torch.no_grad():
                            member["x"].data = torch.max(torch.min(member["x"], s.hi), s.lo)
                    done[n] += 1
                    work += 1
                    member["finite"] = math.isfinite(member["last"])
                    if done[n] % cfg.log_every == 0 or done[n] == its:
                        result.history.append((done[n] - 1, member["last"]))
                        if progress is not None:
                            progress(min(work, int(total_work)), int(total_work), member["last"])
                    if cfg.time_budget is not None and time.perf_counter() - t0 > cfg.time_budget:
                        result.stopped_by_budget = True
                        break
                if result.stopped_by_budget:
                    break
            self._lbfgs_sync(pop, states)
            x = pop.theta["x"]
            _, _, aux, _ = one(pop.theta, {}, pop.labels, pop.dist_w, pop.reg_w)
            pop.record(criterion_scores(cfg.select, aux, x), x, stop)
            if result.stopped_by_budget or level >= len(plan.rungs):
                break
            alive = set(pop.candidate.tolist())
            archive_candidates(pop, result, stop)
            survivors = prune(pop, len(candidates), plan.keep[level], prior_strength(candidates), cfg.select)
            keep = [n for n, c in enumerate(states) if c["candidate"] in survivors]
            states, done = [states[n] for n in keep], [done[n] for n in keep]
            result.rungs.append({"iteration": stop, "kept": survivors, "dropped": sorted(alive - set(survivors))})
        result.iterations = result.planned = max(done) if done else 0
        result.seconds = time.perf_counter() - t0
        archive_candidates(pop, result, result.iterations)
        return pop, result

    def _lbfgs_member(self, pop: Population, n: int, candidates: list[Candidate], one) -> dict:
        """One member's L-BFGS state: its leaves, optimiser and closure."""
        cfg = self.config
        x = pop.theta["x"][n].clone().requires_grad_(True)
        lab = pop.labels[n].clone()
        leaves = [x] + ([lab.requires_grad_(True)] if pop.joint else [])
        a, w = pop.dist_w[n:n + 1], pop.reg_w[n:n + 1]
        member = {"x": x, "labels": lab, "last": float("nan"), "finite": True,
                  "candidate": int(pop.candidate[n])}

        def closure():
            g, total, aux, _ = one({"x": x.detach().unsqueeze(0)}, {}, lab.detach().unsqueeze(0), a, w)
            x.grad = g["x"][0]
            if pop.joint:
                lab.grad = g["__labels__"][0]
            member["last"] = float(aux[0][0])
            return total[0].detach()

        member["closure"] = closure
        member["opt"] = torch.optim.LBFGS(leaves, lr=candidates[member["candidate"]].lr,
                                          max_iter=cfg.lbfgs_inner_steps, history_size=100,
                                          line_search_fn="strong_wolfe")
        return member

    @staticmethod
    def _lbfgs_sync(pop: Population, states: list[dict]) -> None:
        """Copy the members' L-BFGS leaves back into the population's stacked state."""
        pop.theta = {"x": torch.stack([m["x"].detach() for m in states])}
        pop.labels = torch.stack([m["labels"].detach() for m in states])

    # ---------------------------------------------------------------------------------------- result
    def _final_distances(self, s: MatchingSetup, pop: Population) -> torch.Tensor:
        """Every surviving member's own matching distance at its last iterate."""
        step = member_step(s.objective, pop.joint, vectorize=False)
        _, _, aux, _ = step(pop.theta, pop.const, pop.labels, pop.dist_w, pop.reg_w)
        d = aux[0].detach().cpu()
        return torch.where(torch.isfinite(d), d, torch.full_like(d, float("inf")))

    def _result(self, s: MatchingSetup, candidates: list[Candidate], pop: Population, result: LoopResult,
                seconds: float) -> Reconstruction:
        cfg, obs = self.config, s.observation
        if cfg.tune == "off" or len(candidates) == 1:  # one recipe: the restart with the lowest final distance
            final = self._final_distances(s, pop)
            best = int(final.argmin())
            x, labels, loss = pop.theta["x"][best], pop.labels[best], float(final[best])
            restart_losses = [float(v) for v in final]
            winner = 0
        else:  # tuned: the selection rule's candidate, its best iterate (contrast restored where invisible)
            self._restore_contrast(s, pop, result)
            scores = torch.full((len(candidates),), float("inf"))
            for k, a in result.archive.items():
                scores[k] = a.score
            winner = rank_candidates(scores, prior_strength(candidates), cfg.select)[0]
            a = result.archive[winner]
            x, labels, loss = a.x, a.labels, a.score
            restart_losses = [float(pop.best_score[i]) for i, k in enumerate(pop.candidate.tolist()) if k == winner]
        finish = s.finish or (lambda x_, y_: (x_, y_))
        x, labels = finish(x, labels)
        out_labels = labels.argmax(-1) if pop.joint else labels
        info: dict[str, Any] = {**asdict(cfg), "seed": self.seed}
        chosen = candidates[winner]
        info.update(lr=chosen.lr, distance=chosen.distance, init=chosen.init,
                    regularizers=s.member_regularizers(chosen))
        info["tuning"] = {**_tuning_record(cfg, candidates, result, winner), "family": s.family}
        rec = Reconstruction(
            images=to_pixels(x, obs), labels=out_labels.detach().cpu(), attack=self.name, matching_loss=loss,
            restart_losses=restart_losses, history=result.history, iterations=result.iterations,
            seconds=seconds, label_source=s.label_source, config=info)
        if len(candidates) > 1:
            done = {k: finish(a.x.to(self.device), a.labels.to(self.device)) for k, a in result.archive.items()}
            rec.candidates = {k: (to_pixels(x_, obs), (y_.argmax(-1) if pop.joint else y_).detach().cpu())
                              for k, (x_, y_) in done.items()}
        return rec

    def _restore_contrast(self, s: MatchingSetup, pop: Population, result: LoopResult) -> None:
        """``adaptive`` selection: rescale each archived candidate's batch to the data's contrast where the
        update cannot tell the difference (see :mod:`.tuning`), unless no candidate fits at all or the victim's
        family is one of :data:`~.tuning.NO_CONTRAST_RESTORATION`."""
        if self.config.select != "adaptive" or not result.archive or s.family in NO_CONTRAST_RESTORATION:
            return
        if min(a.score for a in result.archive.values()) >= FIT_FAILED:
            return
        step = member_step(s.objective, pop.joint, vectorize=False)
        a0, w0 = pop.dist_w[:1] * 0, pop.reg_w[:1] * 0
        for a in result.archive.values():
            x = a.x.to(self.device)
            restored = torch.max(torch.min(restore_contrast(x), s.hi), s.lo) if self.config.boxed else restore_contrast(x)
            _, _, aux, _ = step({"x": restored.unsqueeze(0)}, {}, a.labels.to(self.device).unsqueeze(0), a0, w0)
            d = float(aux[1][0])
            if math.isfinite(d) and d <= a.score * (1 + CONTRAST_TOLERANCE):
                a.x, a.score, a.contrast_restored = restored.cpu(), d, True


def _tuning_record(cfg: MatchingConfig, candidates: list[Candidate], result: LoopResult, winner: int) -> dict:
    """What the tuner did, JSON-ready: every candidate's setting, best score, when it was reached and stopped."""
    rows = []
    for k, c in enumerate(candidates):
        a = result.archive.get(k)
        rows.append({**c.to_dict(), "label": c.label(), "score": None if a is None else a.score,
                     "best_iteration": None if a is None else a.iteration,
                     "stopped_at": None if a is None else a.stopped_at,
                     "contrast_restored": bool(a is not None and a.contrast_restored)})
    return {"mode": cfg.tune, "criterion": cfg.select, "winner": winner, "candidates": rows,
            "rungs": result.rungs, "iterations": result.iterations, "planned_iterations": result.planned,
            "time_budget": cfg.time_budget, "stopped_by_budget": result.stopped_by_budget,
            "loop_seconds": result.seconds}


__all__ = ["GradientMatchingAttack", "MatchingConfig", "MatchingSetup", "TUNE_MODES", "attack_labels",
           "autograd_param_grad", "bn_targets_for", "func_param_grad", "member_step", "pixel_box", "population_step",
           "schedule_scale", "to_pixels"]
