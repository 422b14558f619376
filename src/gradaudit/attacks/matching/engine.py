"""The gradient-matching engine (methods.md section 2).

    min_x  D(u(x, y), u*) + sum_r lambda_r R_r(x)

over a dummy batch x (and, for DLG's joint variant, soft labels), where u(x, y) is the update the candidate
batch would produce under the observed protocol (the FedSGD mean gradient, or theta_0 - theta_K from K
unrolled local SGD steps), D a distance from :mod:`.distances` and R_r the regularizers of
:mod:`.regularizers`.

Restarts are optimised together: the objective of one restart is a pure function of its batch, and
``torch.func.vmap(torch.func.grad_and_value(objective))`` evaluates all R restarts in one vectorised call
(gradient of a gradient, batched), instead of a Python loop. Adam (optionally on the sign of the gradient, as
Inverting Gradients does) is elementwise, so one optimiser over the [R, B, C, H, W] tensor is R independent
optimisations. L-BFGS couples its coordinates through its line search, so its restarts run one after another.
The images live in the model's normalised space, clamped to the valid pixel box after each step, and the
restart with the lowest final matching distance is kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch.func import grad, grad_and_value, vmap

from ...errors import ConfigError, unknown_name
from ...threat.observation import Observation
from ..base import Attack, ProgressFn, Reconstruction
from .distances import DISTANCES, get_distance
from .labels import recover_labels
from .regularizers import REGULARIZERS, RegularizerContext, get_regularizer
from .victim import FunctionalVictim

LabelStrategy = Literal["auto", "given", "recover", "joint"]


def func_param_grad(loss, params, x, y):
    """dL/dtheta by torch.func (composable with vmap over restarts)."""
    return grad(loss, has_aux=True)(params, x, y)


def autograd_param_grad(loss, params, x, y):
    """dL/dtheta by torch.autograd with create_graph (less overhead for a single restart)."""
    leaves = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
    value, aux = loss(leaves, x, y)
    grads = torch.autograd.grad(value, list(leaves.values()), create_graph=True)
    return dict(zip(leaves, grads)), aux


def autograd_step(objective, joint: bool):
    """(grads w.r.t. x [and soft labels], (total, distance)) for one restart, by plain autograd."""
    def step(x, label_param):
        x = x.detach().requires_grad_(True)
        leaves = [x]
        if joint:
            label_param = label_param.detach().requires_grad_(True)
            leaves.append(label_param)
        with torch.enable_grad():
            total, dist = objective(x, label_param, autograd_param_grad)
            grads = torch.autograd.grad(total, leaves)
        return (grads if joint else grads[0]), (total.detach(), dist.detach())
    return step


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
        init: "randn" (standard normal in normalised space) or "rand" (uniform pixels).
        labels: "auto" (given when observed, else recovered), "given", "recover" (iDLG / counting), or
            "joint" (DLG: optimise soft labels with the images).
        first_bn_weight: weight of the first BN layer in the "bn" prior.
        vectorize: run restarts through vmap (falls back to a loop when False).
        parameterization: what is optimised (:mod:`gradaudit.attacks.priors.parameterization`): "pixels"
            (the images themselves, the default), "latent" (GI-z), "generator" (GI-w), "gias" or "dip".
        generator: the prior's checkpoint (NAME / NAME.json / NAME.safetensors, or ``package.module:factory``)
            for "latent", "generator" and "gias".
        latent_iterations, latent_lr: GIAS's first phase (latent search with the generator frozen).
        allow_train_overlap: let callers that know the evaluation images use a prior trained on them
            (:func:`gradaudit.attacks.priors.check_held_out`); the attack itself never sees those images.
    """

    distance: str = "cosine"
    regularizers: dict[str, float] = field(default_factory=lambda: {"tv": 0.05})
    optimizer: str = "adam"
    lr: float = 0.1
    signed: bool = True
    iterations: int = 1000
    restarts: int = 1
    schedule: str = "multistep"
    boxed: bool = True
    init: str = "randn"
    labels: str = "auto"
    first_bn_weight: float = 10.0
    lbfgs_inner_steps: int = 1
    vectorize: bool = True
    log_every: int = 10
    parameterization: str = "pixels"
    generator: str | None = None
    latent_iterations: int = 0
    latent_lr: float = 0.03
    allow_train_overlap: bool = False

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
        if self.init not in ("randn", "rand"):
            raise unknown_name("init", self.init, ("randn", "rand"))
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
        if kind in ("latent", "generator", "gias") and not self.generator:
            raise ConfigError(f"parameterization '{kind}' needs a generator: generator=PATH of a checkpoint "
                              f"(train one with 'gradaudit prior train') or package.module:factory")
        if self.latent_iterations < 0 or not (math.isfinite(self.latent_lr) and self.latent_lr > 0):
            raise ConfigError("latent_iterations must be >= 0 and latent_lr > 0")


class GradientMatchingAttack(Attack):
    """Optimisation-based gradient inversion with pluggable distance, priors, optimiser and label recovery."""

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

    # ----------------------------------------------------------------- set-up
    def _labels(self, obs: Observation, victim: FunctionalVictim) -> tuple[torch.Tensor | None, str]:
        strategy = self.config.labels
        if strategy == "joint":
            return None, "joint"
        if strategy in ("auto", "given") and obs.labels is not None:
            return obs.labels.to(self.device), "given"
        if strategy == "given":
            raise ConfigError("label strategy 'given' but the observation does not include labels "
                              "(threat model: labels unknown); use 'auto' or 'recover'")
        labels, method = recover_labels(obs, victim)
        return labels.to(self.device), method

    def _bn_targets(self, obs: Observation, victim: FunctionalVictim):
        if "bn" not in self.config.regularizers:
            return []
        if not victim.bn_layers:
            raise ConfigError(f"the 'bn' prior needs batch-norm layers; model '{obs.model.name}' has none")
        if obs.bn_statistics is not None:
            return [(m.to(self.device), v.to(self.device)) for m, v in obs.bn_statistics]
        running = victim.running_statistics(obs)
        if not running:
            raise ConfigError("the 'bn' prior needs the private batch's BN statistics (threat model) or the "
                              "model's running statistics in the observation; neither is present")
        return running

    def _box(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(obs.data.mean, device=self.device).view(-1, 1, 1)
        std = torch.tensor(obs.data.std, device=self.device).view(-1, 1, 1)
        return (0 - mean) / std, (1 - mean) / std

    # -------------------------------------------------------------- objective
    def _make_objective(self, obs: Observation, victim: FunctionalVictim, bn_targets):
        cfg = self.config
        distance = get_distance(cfg.distance)
        regs = [(get_regularizer(n), w) for n, w in cfg.regularizers.items() if w > 0]
        names = victim.names
        target = [obs.update[n].to(self.device, torch.float32) for n in names]
        params = victim.params
        local = obs.update_kind == "local_update"
        steps, lr = obs.local_steps, obs.local_lr

        def update_of(x, y, param_grad):
            if not local:
                g, stats = param_grad(victim.loss, params, x, y)
                return [g[n] for n in names], stats
            p, stats = params, None
            for _ in range(steps):  # unrolled FedAvg local training, differentiable in x
                g, st = param_grad(victim.loss, p, x, y)
                stats = st if stats is None else stats
                p = {n: p[n] - lr * g[n] for n in names}
            return [params[n] - p[n] for n in names], stats

        def objective(x, label_param, param_grad=func_param_grad, latent=None):
            y = label_param.softmax(-1) if label_param.is_floating_point() else label_param
            u, stats = update_of(x, y, param_grad)
            d = distance(u, target)
            total = d
            if regs:
                ctx = RegularizerContext(bn_inputs=stats, bn_targets=bn_targets,
                                         first_bn_weight=cfg.first_bn_weight, latent=latent)
                for fn, w in regs:
                    total = total + w * fn(x, ctx)
            return total, d

        return objective

    # ------------------------------------------------------------------ attack
    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        cfg = self.config
        if cfg.parameterization != "pixels":  # generative priors (seed 001): optimise P(theta), not pixels
            from ..priors.attack import reconstruct_with_prior

            return reconstruct_with_prior(self, observation, progress)
        t0 = time.perf_counter()
        obs = observation.to(self.device)
        victim = FunctionalVictim(obs, self.device)
        labels, label_source = self._labels(obs, victim)
        bn_targets = self._bn_targets(obs, victim)
        objective = self._make_objective(obs, victim, bn_targets)
        lo, hi = self._box(obs)

        B = obs.batch_size
        c, h, w = obs.model.input_shape
        R = cfg.restarts
        gen = torch.Generator().manual_seed(self.seed)
        if cfg.init == "randn":
            x = torch.randn(R, B, c, h, w, generator=gen)
        else:
            x = (torch.rand(R, B, c, h, w, generator=gen) * (hi - lo).cpu() + lo.cpu())
        x = x.to(self.device)
        joint = labels is None
        if joint:
            label_param = torch.randn(R, B, obs.model.num_classes, generator=gen).to(self.device)
        else:
            label_param = labels.view(1, B).expand(R, B).contiguous()

        if cfg.optimizer == "adam":
            x, label_param, history = self._run_adam(objective, x, label_param, joint, lo, hi, progress)
        else:
            x, label_param, history = self._run_lbfgs(objective, x, label_param, joint, lo, hi, progress)

        with torch.no_grad():
            final = torch.stack([objective(x[r], label_param[r])[1].detach() for r in range(R)])
        final = torch.where(torch.isfinite(final), final, torch.full_like(final, float("inf")))
        best = int(final.argmin())
        mean = torch.tensor(obs.data.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(obs.data.std, device=self.device).view(1, -1, 1, 1)
        images = (x[best] * std + mean).clamp(0, 1).detach().cpu()
        out_labels = label_param[best].argmax(-1) if joint else label_param[best]
        return Reconstruction(
            images=images, labels=out_labels.detach().cpu(), attack=self.name,
            matching_loss=float(final[best]), restart_losses=[float(v) for v in final],
            history=history, iterations=cfg.iterations, seconds=time.perf_counter() - t0,
            label_source=label_source, config={**asdict(cfg), "seed": self.seed})

    def _schedule(self, optimizer):
        if self.config.schedule == "none" or self.config.iterations < 8:
            return None
        n = self.config.iterations
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3 * n // 8, 5 * n // 8, 7 * n // 8],
                                                    gamma=0.1)

    def _run_adam(self, objective, x, label_param, joint, lo, hi, progress):
        cfg = self.config
        if cfg.vectorize and x.shape[0] > 1:
            argnums = (0, 1) if joint else 0
            step = vmap(grad_and_value(objective, argnums=argnums, has_aux=True))
        else:
            single = autograd_step(objective, joint)
            step = lambda xs, ls: _loop(single, xs, ls, joint)  # noqa: E731
        x = x.clone().requires_grad_(True)
        leaves = [x] + ([label_param.requires_grad_(True)] if joint else [])
        opt = torch.optim.Adam(leaves, lr=cfg.lr)
        sched = self._schedule(opt)
        history: list[tuple[int, float]] = []
        for it in range(cfg.iterations):
            grads, (_, dist) = step(x.detach(), label_param.detach())
            gx, gl = (grads if joint else (grads, None))
            x.grad = gx.sign() if cfg.signed else gx
            if joint:
                label_param.grad = gl
            opt.step()
            if sched is not None:
                sched.step()
            if cfg.boxed:
                with torch.no_grad():
                    x.data = torch.max(torch.min(x, hi), lo)
            if it % cfg.log_every == 0 or it == cfg.iterations - 1:
                best = float(dist.detach().min())
                history.append((it, best))
                if progress is not None:
                    progress(it + 1, cfg.iterations, best)
        return x.detach(), label_param.detach(), history

    def _run_lbfgs(self, objective, x, label_param, joint, lo, hi, progress):
        cfg = self.config
        step = autograd_step(objective, joint)
        xs, ls, history = [], [], []
        R = x.shape[0]
        for r in range(R):
            xr = x[r].clone().requires_grad_(True)
            lr_ = label_param[r].clone()
            leaves = [xr] + ([lr_.requires_grad_(True)] if joint else [])
            opt = torch.optim.LBFGS(leaves, lr=cfg.lr, max_iter=cfg.lbfgs_inner_steps, history_size=100,
                                    line_search_fn="strong_wolfe")
            last = {"d": float("nan")}

            def closure():
                grads, (total, dist) = step(xr.detach(), lr_.detach())
                gx, gl = (grads if joint else (grads, None))
                xr.grad = gx
                if joint:
                    lr_.grad = gl
                last["d"] = float(dist)
                return total.detach()

            for it in range(cfg.iterations):
                opt.step(closure)
                if cfg.boxed:
                    with torch.no_grad():
                        xr.data = torch.max(torch.min(xr, hi), lo)
                if it % cfg.log_every == 0 or it == cfg.iterations - 1:
                    history.append((r * cfg.iterations + it, last["d"]))
                    if progress is not None:
                        progress(r * cfg.iterations + it + 1, R * cfg.iterations, last["d"])
                if not math.isfinite(last["d"]):
                    break
            xs.append(xr.detach())
            ls.append(lr_.detach())
        return torch.stack(xs), torch.stack(ls), history


def _loop(step, xs, ls, joint):
    """Restarts one after another (for models vmap cannot batch); same outputs as the vmapped step."""
    outs = [step(xs[r], ls[r]) for r in range(xs.shape[0])]
    if joint:
        gx = torch.stack([o[0][0] for o in outs])
        gl = torch.stack([o[0][1] for o in outs])
        grads = (gx, gl)
    else:
        grads = torch.stack([o[0] for o in outs])
    total = torch.stack([o[1][0] for o in outs])
    dist = torch.stack([o[1][1] for o in outs])
    return grads, (total, dist)
