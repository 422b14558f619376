"""Gradient matching over a generator: GI-z, GI-w, GIAS and the deep image prior (seed 001; methods.md 3).

    min_theta  D(u(P(theta), y), u*) + sum_r lambda_r R_r(P(theta)) + lambda_z ||z||^2 / d

with P a parameterization of :mod:`.parameterization`, and D, R_r, u and label recovery those of the
gradient-matching engine (:class:`~gradaudit.attacks.matching.engine.GradientMatchingAttack` calls
:func:`reconstruct_with_prior` when its ``parameterization`` is not ``"pixels"``). GIAS (Jeon et al., NeurIPS
2021) runs two phases: GI-z (``latent_iterations`` Adam steps at ``latent_lr`` on z with G frozen), then the
per-image generator copies with z frozen (``iterations`` steps at ``lr``), each with the multistep schedule.
Restarts run through ``vmap`` (Adam is elementwise, so one optimiser over the stacked [R, ...] tensors is R
independent optimisations) and the restart with the lowest final matching distance is kept.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
from torch.func import grad_and_value, vmap

from ...errors import ConfigError
from ...threat.observation import Observation
from ..base import ProgressFn, Reconstruction
from ..matching.loop import multistep_scheduler
from ..matching.objective import autograd_param_grad
from . import parameterization as P
from .checkpoint import LoadedGenerator, load_generator


def _check_shape(G, obs: Observation, latent_dim: int | None, device) -> None:
    probe = torch.zeros(1, latent_dim, device=device)
    with torch.no_grad():
        shape = tuple(G(probe).shape[1:])
    if shape != tuple(obs.model.input_shape):
        raise ConfigError(f"the generator draws images of shape {list(shape)} but model '{obs.model.name}' "
                          f"expects {list(obs.model.input_shape)}; train a prior for this data "
                          f"(gradaudit prior train --data ...)")


class _Phase:
    """Adam on one parameterization: vmapped over restarts, or a loop with plain autograd."""

    def __init__(self, attack, objective, param: P.Parameterized, label_param, joint: bool, extra=None):
        extra = extra or {}
        self.attack, self.param, self.joint = attack, param, joint
        self.label_param = label_param
        render, key = param.render, param.latent_key

        a, w = objective.weights(attack.config.distance, {**attack.config.regularizers, **extra})

        def obj(theta, const, lab, param_grad=None):
            x = render(theta, const)
            kw = {} if param_grad is None else {"param_grad": param_grad}
            total, (own, _, _) = objective(x, lab, a, w, latent=theta[key] if key else None, **kw)
            return total, own

        self.obj = obj
        argnums = (0, 2) if joint else 0
        self.vstep = vmap(grad_and_value(obj, argnums=argnums, has_aux=True))

    def _loop_step(self, theta, const, lab):
        R = lab.shape[0]
        gs, totals, dists, gls = [], [], [], []
        for r in range(R):
            th = {k: v[r].detach().requires_grad_(True) for k, v in theta.items()}
            cr = {k: v[r] for k, v in const.items()}
            leaves = list(th.values())
            lr_ = lab[r].detach()
            if self.joint:
                lr_ = lr_.requires_grad_(True)
                leaves = leaves + [lr_]
            with torch.enable_grad():
                total, dist = self.obj(th, cr, lr_, autograd_param_grad)
                grads = torch.autograd.grad(total, leaves)
            gs.append(dict(zip(th, grads[:len(th)])))
            if self.joint:
                gls.append(grads[-1])
            totals.append(total.detach())
            dists.append(dist.detach())
        g = {k: torch.stack([d[k] for d in gs]) for k in theta}
        grads = (g, torch.stack(gls)) if self.joint else g
        return grads, (torch.stack(totals), torch.stack(dists))

    def run(self, iterations: int, lr: float, progress, offset: int, total_its: int, history):
        cfg = self.attack.config
        theta = {k: v.clone().requires_grad_(True) for k, v in self.param.theta.items()}
        const = self.param.const
        lab = self.label_param.clone()
        leaves = list(theta.values()) + ([lab.requires_grad_(True)] if self.joint else [])
        opt = torch.optim.Adam(leaves, lr=lr)
        sched = multistep_scheduler(opt, iterations, cfg.schedule)
        vectorize = cfg.vectorize
        for it in range(iterations):
            detached = {k: v.detach() for k, v in theta.items()}
            if vectorize:
                grads, (_, dist) = self.vstep(detached, const, lab.detach())
            else:
                grads, (_, dist) = self._loop_step(detached, const, lab.detach())
            g, gl = grads if self.joint else (grads, None)
            for k, v in theta.items():
                v.grad = g[k].sign() if cfg.signed else g[k]
            if self.joint:
                lab.grad = gl
            opt.step()
            if sched is not None:
                sched.step()
            if it % cfg.log_every == 0 or it == iterations - 1:
                best = float(dist.detach().min())
                history.append((offset + it, best))
                if progress is not None:
                    progress(offset + it + 1, total_its, best)
        self.param.theta = {k: v.detach() for k, v in theta.items()}
        self.label_param = lab.detach()
        return self.param, self.label_param

    def final_distances(self) -> torch.Tensor:
        R = self.label_param.shape[0]
        out = []
        with torch.no_grad():
            for r in range(R):
                th = {k: v[r] for k, v in self.param.theta.items()}
                cr = {k: v[r] for k, v in self.param.const.items()}
                out.append(self.obj(th, cr, self.label_param[r])[1].detach())
        return torch.stack(out)


def reconstruct_with_prior(attack, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
    """Run ``attack`` (a GradientMatchingAttack whose config names a non-pixel parameterization)."""
    cfg = attack.config
    kind = cfg.parameterization
    if kind == "gias":
        plan = [("latent", cfg.latent_iterations, cfg.latent_lr), ("gias", cfg.iterations, cfg.lr)]
    else:
        plan = [(kind, cfg.iterations, cfg.lr)]
    needs = P.PARAMETERIZATIONS[kind].needs_generator
    loaded = None if not needs else load_generator(cfg.generator, attack.device, trust_code=attack.trust_code,
                                                       allow_legacy=attack.allow_legacy)
    return invert(attack, observation, loaded, plan, progress)[0]


def invert(attack, observation: Observation, loaded: LoadedGenerator | None, plan: list[tuple[str, int, float]],
           progress: ProgressFn | None = None) -> tuple[Reconstruction, dict[str, torch.Tensor]]:
    """Run the phases of ``plan`` ((parameterization, iterations, lr), ...) and return the reconstruction and
    the kept restart's final theta. A "generator" or "gias" phase after a "latent" one starts from its z."""
    cfg = attack.config
    t0 = time.perf_counter()
    device = attack.device
    obs = observation.to(device)
    setup = attack.setup(obs)
    labels, label_source, objective = setup.labels, setup.label_source, setup.objective
    norm = P.normalizer(obs.data.mean, obs.data.std, device)
    B, R = obs.batch_size, cfg.restarts
    c, h, w = obs.model.input_shape
    gen = torch.Generator().manual_seed(attack.seed)
    joint = labels is None
    if joint:
        label_param = torch.randn(R, B, obs.model.num_classes, generator=gen).to(device)
    else:
        label_param = labels.view(1, B).expand(R, B).contiguous()

    G, meta, z = None, {}, None
    if loaded is not None:
        G, meta = loaded.module.eval(), loaded.meta
        for p in G.parameters():
            p.requires_grad_(False)
        _check_shape(G, obs, loaded.latent_dim, device)
        z = torch.randn(R, B, loaded.latent_dim, generator=gen).to(device)
    history: list[tuple[int, float]] = []
    total_its = sum(n for _, n, _ in plan)
    offset, phase = 0, None
    for kind, n, lr in plan:
        info = P.PARAMETERIZATIONS[kind]
        if info.needs_generator and G is None:
            raise ConfigError(f"parameterization '{kind}' needs a generator")
        if phase is not None and "z" in phase.param.theta:
            z = phase.param.theta["z"]
        param = info.build(P.RenderContext(G, z, norm, R, B, (c, h, w), attack.seed, device))
        phase = _Phase(attack, objective, param, label_param, joint, setup.extra_regularizers)
        phase.run(n, lr, progress, offset, total_its, history)
        label_param = phase.label_param
        offset += n
    final = phase.final_distances()
    final = torch.where(torch.isfinite(final), final, torch.full_like(final, float("inf")))
    best = int(final.argmin())
    with torch.no_grad():
        th = {k: v[best] for k, v in phase.param.theta.items()}
        cr = {k: v[best] for k, v in phase.param.const.items()}
        x = phase.param.render(th, cr)
    mean = torch.tensor(obs.data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(obs.data.std, device=device).view(1, -1, 1, 1)
    images = (x * std + mean).clamp(0, 1).detach().cpu()
    out_labels = label_param[best].argmax(-1) if joint else label_param[best]
    info = {**asdict(cfg), "seed": attack.seed}
    if meta:
        info["generator_meta"] = {k: meta.get(k) for k in ("kind", "kwargs", "training_steps", "integrity")}
        if loaded.legacy:
            info["generator_meta"]["legacy"] = loaded.legacy
    rec = Reconstruction(
        images=images, labels=out_labels.detach().cpu(), attack=attack.name, matching_loss=float(final[best]),
        restart_losses=[float(v) for v in final], history=history, iterations=total_its,
        seconds=time.perf_counter() - t0, label_source=label_source, config=info)
    return rec, th
