"""CLI commands for generative priors (thin: each calls :mod:`gradaudit.attacks.priors`).

    gradaudit prior train --data fashion-mnist --out DIR [--steps 1200 --width 32 ...]
    gradaudit prior train --data embedded --exclude-labels 2,5 --photo-crops --out DIR
    gradaudit prior meta-learn --data embedded --exclude-labels 2,5 --out DIR [--tasks 40 ...]

``train`` resumes from ``DIR/last`` when it exists (``--no-resume`` starts over); the prior for the attacks is
``DIR/generator`` (``gradaudit attack --attack gias --generator DIR/generator``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from .options import download_option, trust_option
from .ui import console
from .ui import progress_bar as _progress


def _int_list(text: Optional[str], what: str) -> list[int]:
    if not text:
        return []
    out: list[int] = []
    try:
        for part in text.split(","):
            a, sep, b = part.partition(":")
            out += list(range(int(a), int(b))) if sep else [int(a)]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers or start:stop ranges, got '{text}'") from None
    return out


def _fetch(download: bool, dataset: str, root: Optional[str], split: str) -> None:
    """``--download``: fetch the dataset's files now (a no-op when they are already found)."""
    if download:
        from ..data import load_dataset

        load_dataset(dataset, root=root, split=split, download=True)


def train(
    data: str = typer.Option(..., "--data", help="embedded | fashion-mnist | cifar10 | image-folder | ..."),
    out: Path = typer.Option(..., "--out", help="Output folder (checkpoints, sample grids); resumed if present."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder."),
    split: str = typer.Option("train", help="Split to train on (evaluate on the other one)."),
    indices: Optional[str] = typer.Option(None, help="Training indices, e.g. 0:50000 or 1,2,5 (default all)."),
    exclude_labels: Optional[str] = typer.Option(None, help="Classes left out (embedded: the held-out photos)."),
    photo_crops: bool = typer.Option(False, help="embedded only: train on random crops of the source photos."),
    augment: bool = typer.Option(False, help="Random flips and 2-pixel shifts."),
    steps: int = typer.Option(1200, help="Total training steps (a resumed run continues up to this)."),
    batch_size: int = typer.Option(128, help="Batch size."),
    width: int = typer.Option(32, help="DCGAN width w (channels 8w-4w-2w-w; the reference uses 64)."),
    latent_dim: int = typer.Option(100, help="Latent dimension."),
    lr: float = typer.Option(2e-4, help="Adam learning rate."),
    sample_every: int = typer.Option(200, help="Write a sample grid every N steps."),
    checkpoint_every: int = typer.Option(100, help="Checkpoint every N steps."),
    seed: int = typer.Option(0, help="Seed."),
    resume: bool = typer.Option(True, help="Resume from OUT/last when it exists."),
    download: bool = download_option(),
) -> None:
    """Train the DCGAN prior (Adam 2e-4, beta1 0.5) with a progress bar, sample grids and resume."""
    from ..attacks.priors.training import TrainConfig, train_dcgan

    cfg = TrainConfig(dataset=data, root=data_root, split=split,
                      indices=_int_list(indices, "--indices") or None,
                      exclude_labels=_int_list(exclude_labels, "--exclude-labels"), photo_crops=photo_crops,
                      augment=augment, steps=steps, batch_size=batch_size, width=width, latent_dim=latent_dim,
                      lr=lr, sample_every=sample_every, checkpoint_every=checkpoint_every, seed=seed)
    _fetch(download, data, data_root, split)
    with _progress() as progress:
        task = progress.add_task(f"DCGAN / {data}", total=steps, loss="-")

        def update(done: int, total: int, loss_d: float, loss_g: float) -> None:
            progress.update(task, completed=done, total=total, loss=f"D {loss_d:.3f} G {loss_g:.3f}")

        summary = train_dcgan(cfg, out, resume=resume, progress=update)
    console.print(f"Trained {summary['steps']} steps ({summary['train_seconds']:.0f} s of training) on "
                  f"{summary['num_train_images']} {data} images.")
    console.print(f"  prior        {summary['generator']}  (use: --attack gias --generator {summary['generator']})")
    console.print(f"  resume state {summary['last']}")
    console.print(f"  samples      {summary['samples']}")


def meta_learn(
    data: str = typer.Option("embedded", "--data", help="Where the clients' private images come from."),
    out: Path = typer.Option(..., "--out", help="Output folder (checkpoints); resumed if present."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder."),
    split: str = typer.Option("train", help="Split the clients' images come from."),
    indices: Optional[str] = typer.Option(None, help="Client images, e.g. 0:1000 (default all)."),
    exclude_labels: Optional[str] = typer.Option(None, help="Classes never used (embedded: held-out photos)."),
    model: str = typer.Option("lenet", help="Victim model."),
    tasks: int = typer.Option(40, help="Meta-learning tasks (observations); the reference uses ~200."),
    task_batch: int = typer.Option(4, help="Images behind one observation."),
    latent_iterations: int = typer.Option(60, help="Latent search steps per task (reference 1000)."),
    finetune_iterations: int = typer.Option(30, help="Generator fine-tuning steps per task (reference 500)."),
    width: int = typer.Option(32, help="DCGAN width w."),
    drift_every: int = typer.Option(10, help="One SGD step of the victim model every N tasks (reference ~50)."),
    meta_optimizer: str = typer.Option("sgd", help="Reptile outer step: sgd (interpolation) | adam (reference)."),
    meta_lr: float = typer.Option(0.5, help="Outer step size (reference: Adam at 1e-2)."),
    checkpoint_every: int = typer.Option(5, help="Checkpoint every N tasks."),
    seed: int = typer.Option(0, help="Seed."),
    resume: bool = typer.Option(True, help="Resume from OUT/generator when it exists."),
    download: bool = download_option(),
    trust_model_code: bool = trust_option(),
) -> None:
    """GIML: learn a generator from a stream of observations only (Reptile over latent search + fine-tuning)."""
    from ..attacks.priors.giml import GIMLConfig, meta_learn as run

    cfg = GIMLConfig(dataset=data, root=data_root, split=split, indices=_int_list(indices, "--indices") or None,
                     exclude_labels=_int_list(exclude_labels, "--exclude-labels"), model=model, tasks=tasks,
                     task_batch=task_batch, latent_iterations=latent_iterations,
                     finetune_iterations=finetune_iterations, width=width, drift_every=drift_every,
                     meta_optimizer=meta_optimizer, meta_lr=meta_lr,
                     checkpoint_every=checkpoint_every, seed=seed)
    _fetch(download, data, data_root, split)
    with _progress() as progress:
        task = progress.add_task(f"GIML / {data}", total=tasks, loss="-")

        def update(done: int, total: int, loss: float) -> None:
            progress.update(task, completed=done, total=total, loss=f"{loss:.3g}")

        summary = run(cfg, out, resume=resume, progress=update, trust_code=trust_model_code)
    console.print(f"Meta-learned over {summary['tasks']} tasks ({summary['seconds']:.0f} s); prior "
                  f"{summary['generator']} (use: --attack gias --generator {summary['generator']})")


def register(app: typer.Typer) -> None:
    """Add the ``prior`` command group (train, meta-learn) to ``app``."""
    prior = typer.Typer(no_args_is_help=True, help="Generative image priors: train a DCGAN, meta-learn one (GIML).")
    app.add_typer(prior, name="prior")
    prior.command()(train)
    prior.command("meta-learn")(meta_learn)
