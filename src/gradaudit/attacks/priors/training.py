"""Training the DCGAN prior on data the user has (``gradaudit prior train``), resumable.

The standard DCGAN recipe (Radford et al. 2016; the GIAS reference trains its 32x32 prior the same way):
non-saturating GAN loss, Adam lr 2e-4, beta1 0.5, batch 128, one critic step and one generator step per
iteration. Images are mapped from [0, 1] to the generator's [-1, 1]. With ``augment`` a batch is randomly
flipped left-right and shifted by up to 2 pixels (reflection padding).

The embedded natural set has only 64 images (8 photos x 8 crops), so ``photo_crops=True`` trains on random
square crops (30-100% of the short side, random position, flips) of the *source photos* of the kept classes
instead: the held-out evaluation images are all crops of the excluded photos (``exclude_labels``), and the
provenance lists every embedded index of the training photos as seen.

Every ``checkpoint_every`` steps ``DIR/last.{safetensors,json}`` (generator, critic, both Adam states, the
batch sampler's RNG state, the step) and ``DIR/generator.{safetensors,json}`` (the prior, with its BN running
statistics re-estimated on random latents, :func:`~.generators.calibrate_batchnorm`) are written; a new run
with the same ``DIR`` resumes from ``last``. Every ``sample_every`` steps a grid of 32 samples from fixed
latents goes to ``DIR/samples/step_NNNNNN.png``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from .checkpoint import Provenance, load_checked, save_checked, save_generator
from .generators import DCGAN, DCGANDiscriminator, calibrate_batchnorm, to_pixels

STATE_FORMAT = "gradaudit-prior-training"
#: progress callback: (step done, total steps, critic loss, generator loss)
TrainProgress = Callable[[int, int, float, float], None]


@dataclass
class TrainConfig:
    """DCGAN training settings (validated on construction).

    ``indices`` selects training images of ``dataset[split]`` (None: all), ``exclude_labels`` drops classes
    (the held-out photos of ``embedded``). ``width`` 64 is the reference DCGAN (512-256-128-64); the CPU
    default 32 is four times cheaper per step.
    """

    dataset: str = "fashion-mnist"
    root: str | None = None
    split: str = "train"
    image_size: int | None = None
    indices: list[int] | None = None
    exclude_labels: list[int] = field(default_factory=list)
    steps: int = 1200
    batch_size: int = 128
    lr: float = 2e-4
    beta1: float = 0.5
    latent_dim: int = 100
    width: int = 32
    augment: bool = False
    photo_crops: bool = False
    sample_every: int = 200
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "latent_dim", "width", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"prior training: {name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0 and 0 <= self.beta1 < 1):
            raise ConfigError(f"prior training: lr must be > 0 and beta1 in [0, 1), got {self.lr}, {self.beta1}")
        if self.photo_crops and self.dataset != "embedded":
            raise ConfigError("photo_crops applies to the embedded dataset only")


def _training_images(cfg: TrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, Provenance]:
    """[N, C, H, W] images in [-1, 1] and their provenance."""
    from ...data import load_dataset

    ds = load_dataset(cfg.dataset, root=cfg.root, split=cfg.split, image_size=cfg.image_size)
    idx = list(range(len(ds))) if cfg.indices is None else list(cfg.indices)
    bad = [i for i in idx if not 0 <= i < len(ds)]
    if bad:
        raise ConfigError(f"training index {bad[0]} is out of range for {cfg.dataset} ({len(ds)} images)")
    drop = set(cfg.exclude_labels)
    idx = [i for i in idx if int(ds.labels[i]) not in drop]
    if not idx:
        raise ConfigError("no training images left after exclude_labels")
    note = ""
    if cfg.photo_crops:
        images = _photo_crops(sorted({int(ds.labels[i]) for i in idx}), ds.shape[1], 4096, gen)
        note = (f"random crops of the source photos of classes {sorted({int(ds.labels[i]) for i in idx})}; "
                f"every embedded crop of those photos counts as seen")
    else:
        images = ds.images[idx].to(torch.float32) / 255.0
    return images * 2 - 1, Provenance(cfg.dataset, cfg.split, idx, note)


def _photo_crops(labels: list[int], size: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random square crops (30-100% of the short side) of the embedded set's source photos ``labels``."""
    import numpy as np

    from ...data._pixels import hwc_to_chw, resize_pil
    from ...data.embedded import _photos

    photos = _photos()
    out = []
    for k in range(n):
        photo = photos[labels[k % len(labels)]][1]
        W, H = photo.size
        short = min(W, H)
        side = max(8, int(short * (0.3 + 0.7 * float(torch.rand(1, generator=gen)))))
        left = int(float(torch.rand(1, generator=gen)) * (W - side))
        top = int(float(torch.rand(1, generator=gen)) * (H - side))
        out.append(np.asarray(resize_pil(photo.crop((left, top, left + side, top + side)), size)))
    return hwc_to_chw(out).to(torch.float32) / 255.0


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    pad = F.pad(x, (2, 2, 2, 2), mode="reflect")
    dx, dy = (int(v) for v in torch.randint(0, 5, (2,), generator=gen))
    return pad[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f"{prefix}/{i}/{k}": v for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors, groups) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "/"):
            _, i, k = key.split("/", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def train_dcgan(cfg: TrainConfig, out: str | Path, *, resume: bool = True,
                progress: TrainProgress | None = None) -> dict:
    """Train (or resume training) a DCGAN prior into ``out``; returns a summary (steps, seconds, paths)."""
    from ...checks import check_output_dir
    from ...data.image_grid import save_reconstruction_grid

    out = check_output_dir(out)
    gen = torch.Generator().manual_seed(cfg.seed)
    data, provenance = _training_images(cfg, gen)
    c, h, w = data.shape[1:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G = DCGAN(cfg.latent_dim, c, (h, w), cfg.width)
        D = DCGANDiscriminator(c, (h, w), cfg.width)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    fixed_z = torch.randn(32, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
    step, elapsed = 0, 0.0
    last = out / "last"
    if resume and last.with_suffix(".json").exists():
        state = load_checked(last, STATE_FORMAT)
        tensors, meta = state.tensors, state.meta
        saved = meta["config"]
        for key in ("dataset", "split", "latent_dim", "width", "indices", "exclude_labels", "photo_crops"):
            if saved.get(key) != asdict(cfg).get(key):
                raise ConfigError(f"cannot resume {last}: it was trained with {key}={saved.get(key)!r}, now "
                                  f"{asdict(cfg).get(key)!r} (use another --out or --no-resume)")
        G.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G/")})
        D.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("D/")})
        _restore_optimizer("optG", opt_g, tensors, meta["optG_groups"])
        _restore_optimizer("optD", opt_d, tensors, meta["optD_groups"])
        gen.set_state(tensors["rng"])
        step, elapsed = int(meta["step"]), float(meta.get("seconds", 0.0))

    def checkpoint() -> None:
        tg, gg = _flatten_optimizer("optG", opt_g)
        td, gd = _flatten_optimizer("optD", opt_d)
        tensors = {**{f"G/{k}": v for k, v in G.state_dict().items()},
                   **{f"D/{k}": v for k, v in D.state_dict().items()}, **tg, **td, "rng": gen.get_state()}
        save_checked(last, tensors, {"format": STATE_FORMAT, "step": step, "config": asdict(cfg),
                                     "optG_groups": gg, "optD_groups": gd, "seconds": elapsed})
        prior = calibrate_batchnorm(copy.deepcopy(G), seed=cfg.seed)
        save_generator(out / "generator", prior, provenance=provenance, steps=step,
                       extra={"recipe": "dcgan", "lr": cfg.lr, "beta1": cfg.beta1, "batch_size": cfg.batch_size,
                              "seconds": round(elapsed, 1)})

    def samples() -> Path:
        prior = calibrate_batchnorm(copy.deepcopy(G), seed=cfg.seed)
        with torch.no_grad():
            imgs = to_pixels(prior(fixed_z)).clamp(0, 1)
        rows = [(f"{i * 8}", imgs[i * 8:(i + 1) * 8], None) for i in range(4)]
        return save_reconstruction_grid(rows, out / "samples" / f"step_{step:06d}.png", scale=2)

    ones = torch.ones(cfg.batch_size)
    zeros = torch.zeros(cfg.batch_size)
    G.train()
    D.train()
    while step < cfg.steps:
        t0 = time.perf_counter()
        real = data[torch.randint(0, data.shape[0], (cfg.batch_size,), generator=gen)]
        if cfg.augment or cfg.photo_crops:
            real = _augment(real, gen)
        z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=gen)
        fake = G(z)
        loss_d = F.binary_cross_entropy_with_logits(D(real), ones) + \
            F.binary_cross_entropy_with_logits(D(fake.detach()), zeros)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        elapsed += time.perf_counter() - t0
        if progress is not None:
            progress(step, cfg.steps, float(loss_d.detach()), float(loss_g.detach()))
        if step % cfg.sample_every == 0:
            samples()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
    if not (out / "generator.json").exists():  # resumed a finished run: nothing to do, keep the files
        checkpoint()
    grid = samples()
    return {"steps": step, "train_seconds": elapsed, "generator": out / "generator", "last": last,
            "samples": grid, "num_train_images": len(provenance.indices)}
