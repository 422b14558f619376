"""``gradaudit victim train``: a victim trained for some epochs, for ``model.weights`` (thin:
:func:`gradaudit.evaluation.victims.write_victim`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from .options import trust_option
from .ui import console, stage_bar


def train(
    out: Path = typer.Option(..., "--out", help="Weights file (.safetensors; the recipe goes beside it as .json)."),
    dataset: str = typer.Option("embedded", help="Dataset to train on."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder."),
    split: str = typer.Option("train", help="Split to train on."),
    model: str = typer.Option("convnet", help="Architecture (registered, or package.module:factory with "
                                              "--trust-model-code)."),
    model_kwargs: Optional[str] = typer.Option(None, help='Model keyword arguments as JSON, e.g. \'{"norm": "none"}\'.'),
    epochs: int = typer.Option(5, help="Training epochs."),
    batch_size: int = typer.Option(16, help="Minibatch size."),
    lr: float = typer.Option(0.05, help="SGD learning rate (momentum 0.9, weight decay 5e-4)."),
    seed: int = typer.Option(0, help="Initialisation and minibatch order."),
    trust_model_code: bool = trust_option(),
) -> None:
    """Train a victim for some epochs and save its weights (use them with --set model.weights=FILE)."""
    from ..evaluation.victims import write_victim

    kwargs = None
    if model_kwargs:
        try:
            kwargs = json.loads(model_kwargs)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--model-kwargs is not valid JSON: {e}") from None
        if not isinstance(kwargs, dict):
            raise ConfigError(f"--model-kwargs must be a JSON object, got {model_kwargs}")
    with stage_bar() as bar:
        task: list[int] = []

        def progress(done: int, total: int, loss: float) -> None:
            if not task:
                task.append(bar.add_task(f"{model} on {dataset}", total=total))
            bar.update(task[0], completed=done, total=total, description=f"{model} on {dataset} loss {loss:.3f}")

        path, summary = write_victim(out, dataset=dataset, model=model, epochs=epochs, batch_size=batch_size,
                                     lr=lr, seed=seed, model_kwargs=kwargs, data_root=data_root, split=split,
                                     progress=progress, trust_code=trust_model_code)
    console.print(f"Trained {summary.epochs} epochs on {summary.images} images in {summary.seconds:.0f} s: "
                  f"loss {summary.final_loss:.3f}, training accuracy {summary.final_accuracy:.2f}. "
                  f"Weights: {path} (use --set model.weights={path})", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    victim = typer.Typer(no_args_is_help=True, help="Victim models as a federation has them mid-training.")
    app.add_typer(victim, name="victim")
    victim.command("train")(train)
