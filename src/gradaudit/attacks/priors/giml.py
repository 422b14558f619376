"""GIML: meta-learning a generative prior from gradients alone (Jeon et al., NeurIPS 2021, seed 001; methods.md 3).

The server has no data set, only a stream of observations. It starts from an untrained DCGAN theta_G (BN
running statistics set on random latents, :func:`~.generators.calibrate_batchnorm`, so that eval-mode
activations are normalised; no data involved) and repeats, for task t = 1..T:

1. a client (the existing :class:`~gradaudit.threat.Client`) shares the update of a private batch of
   ``task_batch`` images at the current victim weights; the meta-learner sees only that Observation;
2. latent search: GI-z on the task (``latent_iterations`` Adam steps at ``latent_lr``, G frozen);
3. fine-tuning: one copy of G (shared by the task's images) optimised at those latents (GI-w,
   ``finetune_iterations`` steps at ``finetune_lr``), giving theta_adapted;
4. Reptile outer step on 1/2 ||theta_G - theta_adapted||^2 (gradient theta_G - theta_adapted) moves the prior
   toward the adapted weights. ``meta_optimizer="sgd"`` (default) is Reptile's interpolation (Nichol et al.
   2018), theta_G += ``meta_lr`` (theta_adapted - theta_G) with ``meta_lr`` = 0.5; ``"adam"`` is the
   reference's one Adam step at lr 1e-2. Adam's step is ~lr per weight whatever the adaptation moved, and
   this DCGAN's weights are ~0.02 (init N(0, 0.02)): here 30 Adam steps at 1e-2 saturated the generator
   (every sample the same binary pattern; measured), hence the default;
5. every ``drift_every`` tasks the victim model takes one SGD step (lr ``drift_lr``) on a fresh client batch,
   so the observations come from a model that trains, as in federated learning.

Inner phases are the engine's (:func:`~.attack.invert`): cosine distance, TV, z-norm, label recovery from the
update (labels are not granted). Reference scale: ~200 tasks, 1000 latent steps at lr 3e-2, 500 fine-tuning
steps at lr 1e-3, a drift step every ~50 tasks. The CPU defaults here are far smaller (40 tasks, 60 + 30 steps,
a drift step every 10 tasks), so the meta-learned prior is much weaker than the reference's.

The checkpoint's provenance lists the client pool the tasks were drawn from: those images were seen (through
their gradients), so the held-out check refuses to evaluate on them. ``DIR/last`` holds the meta-optimiser,
victim weights and RNG state; a run with the same ``DIR`` resumes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from .checkpoint import LoadedGenerator, Provenance, load_checked, save_checked, save_generator
from .generators import DCGAN, calibrate_batchnorm
from .training import _flatten_optimizer, _restore_optimizer

STATE_FORMAT = "gradaudit-giml-state"
#: progress callback: (tasks done, tasks total, last task's matching loss)
MetaProgress = Callable[[int, int, float], None]


@dataclass
class GIMLConfig:
    dataset: str = "embedded"
    root: str | None = None
    split: str = "train"
    indices: list[int] | None = None
    exclude_labels: list[int] = field(default_factory=list)
    model: str = "lenet"
    tasks: int = 40
    task_batch: int = 4
    latent_iterations: int = 60
    latent_lr: float = 0.03
    finetune_iterations: int = 30
    finetune_lr: float = 1e-3
    meta_lr: float = 0.5
    meta_optimizer: str = "sgd"
    width: int = 32
    latent_dim: int = 100
    drift_every: int = 10
    drift_lr: float = 0.01
    tv: float = 1e-4
    z_norm: float = 1e-3
    checkpoint_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tasks", "task_batch", "width", "latent_dim", "drift_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GIML: {name} must be >= 1, got {getattr(self, name)}")
        if self.latent_iterations < 0 or self.finetune_iterations < 0:
            raise ConfigError("GIML: iteration counts must be >= 0")
        if not all(math.isfinite(v) and v > 0 for v in (self.latent_lr, self.finetune_lr, self.meta_lr, self.drift_lr)):
            raise ConfigError("GIML: learning rates must be finite and > 0")
        if not all(math.isfinite(v) and v >= 0 for v in (self.tv, self.z_norm)):
            raise ConfigError("GIML: regularizer weights must be finite and >= 0")
        if self.meta_optimizer not in ("sgd", "adam"):
            from ...errors import unknown_name

            raise unknown_name("meta optimizer", self.meta_optimizer, ("sgd", "adam"))


def meta_learn(cfg: GIMLConfig, out: str | Path, *, resume: bool = True,
               progress: MetaProgress | None = None, trust_code: bool = False) -> dict:
    """Run (or resume) GIML into ``out``; the prior is ``out/generator``. Returns a summary.

    ``trust_code``: ``cfg.model`` may be a ``package.module:factory`` the caller trusts (:mod:`gradaudit.trust`).
    """
    from ...data import load_dataset
    from ...models.registry import ModelSpec, build_model
    from ...threat.client import Client, ServerKnowledge
    from ...threat.observation import DataSpec
    from ..matching.engine import GradientMatchingAttack, MatchingConfig
    from .attack import invert

    from ...checks import check_output_dir

    out = check_output_dir(out)
    ds = load_dataset(cfg.dataset, root=cfg.root, split=cfg.split)
    pool = list(range(len(ds))) if cfg.indices is None else list(cfg.indices)
    drop = set(cfg.exclude_labels)
    pool = [i for i in pool if 0 <= i < len(ds) and int(ds.labels[i]) not in drop]
    if len(pool) < cfg.task_batch:
        raise ConfigError(f"GIML: the client pool has {len(pool)} images, fewer than task_batch={cfg.task_batch}")
    c, h, w = ds.shape
    spec = ModelSpec(cfg.model, ds.num_classes, ds.shape, trust_code=trust_code)
    data = DataSpec(ds.name, tuple(ds.mean), tuple(ds.std))
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G = calibrate_batchnorm(DCGAN(cfg.latent_dim, c, (h, w), cfg.width), seed=cfg.seed)
        victim = build_model(spec)
    meta_opt = (torch.optim.Adam if cfg.meta_optimizer == "adam" else torch.optim.SGD)(G.parameters(), lr=cfg.meta_lr)
    drift_opt = torch.optim.SGD(victim.parameters(), lr=cfg.drift_lr)
    done, seconds, losses = 0, 0.0, []
    last = out / "last"
    if resume and last.with_suffix(".json").exists():
        state = load_checked(last, STATE_FORMAT)
        tensors, meta = state.tensors, state.meta
        for key in ("dataset", "split", "indices", "exclude_labels", "model", "width", "latent_dim",
                    "meta_optimizer"):
            if meta["config"].get(key) != asdict(cfg).get(key):
                raise ConfigError(f"cannot resume {last}: it used {key}={meta['config'].get(key)!r}, now "
                                  f"{asdict(cfg).get(key)!r} (use another --out or --no-resume)")
        G.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G/")})
        victim.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("V/")})
        _restore_optimizer("meta", meta_opt, tensors, meta["meta_groups"])
        gen.set_state(tensors["rng"])
        done, seconds, losses = int(meta["tasks_done"]), float(meta["seconds"]), list(meta["losses"])
    provenance = Provenance(cfg.dataset, cfg.split, pool, note="GIML: client images seen only through their "
                            "gradients (every image of the pool counts as seen)")

    def checkpoint() -> None:
        tm, gm = _flatten_optimizer("meta", meta_opt)
        tensors = {**{f"G/{k}": v for k, v in G.state_dict().items()},
                   **{f"V/{k}": v for k, v in victim.state_dict().items()}, **tm, "rng": gen.get_state()}
        save_checked(last, tensors, {"format": STATE_FORMAT, "tasks_done": done, "config": asdict(cfg),
                                     "meta_groups": gm, "seconds": seconds, "losses": losses})
        save_generator(out / "generator", G, provenance=provenance, steps=done,
                       extra={"recipe": "giml", "tasks": done, "config": asdict(cfg), "seconds": round(seconds, 1)})

    attack = GradientMatchingAttack(MatchingConfig(
        parameterization="gias", generator="<in memory>", distance="cosine",
        regularizers={"tv": cfg.tv, "z-norm": cfg.z_norm}, optimizer="adam", signed=False, schedule="none",
        labels="auto", log_every=max(1, cfg.latent_iterations)), seed=cfg.seed, name="giml-task")
    plan = [("latent", cfg.latent_iterations, cfg.latent_lr), ("generator", cfg.finetune_iterations, cfg.finetune_lr)]
    names = [k for k, _ in G.named_parameters()]
    while done < cfg.tasks:
        t0 = time.perf_counter()
        pick = torch.randperm(len(pool), generator=gen)[:cfg.task_batch].tolist()
        images, labels = ds.batch([pool[i] for i in pick])
        obs = Client(victim, spec, data, knowledge=ServerKnowledge(labels=False)).share(images, labels)
        attack.seed = cfg.seed * 100003 + done
        rec, theta = invert(attack, obs, LoadedGenerator(G, {"latent_dim": cfg.latent_dim}), plan)
        params = dict(G.named_parameters())
        meta_opt.zero_grad(set_to_none=True)
        for k in names:  # Reptile: d/dtheta 1/2 ||theta - theta_adapted||^2
            params[k].grad = (params[k].detach() - theta[k].detach()).clone()
        meta_opt.step()
        done += 1
        if done % cfg.drift_every == 0:  # the victim keeps training (FL progress)
            pick = torch.randperm(len(pool), generator=gen)[:max(cfg.task_batch, 8)].tolist()
            x, y = ds.batch([pool[i] for i in pick])
            victim.train()
            drift_opt.zero_grad(set_to_none=True)
            F.cross_entropy(victim(ds.normalize(x)), y).backward()
            drift_opt.step()
        seconds += time.perf_counter() - t0
        losses.append(rec.matching_loss)
        if progress is not None:
            progress(done, cfg.tasks, rec.matching_loss)
        if done % cfg.checkpoint_every == 0 or done == cfg.tasks:
            checkpoint()
    if not (out / "generator.json").exists():
        checkpoint()
    return {"tasks": done, "seconds": seconds, "generator": out / "generator", "last": last, "losses": losses}
