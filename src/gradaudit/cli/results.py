"""CLI commands of the systematic evaluation (thin: each calls the Python API).

    gradaudit utility --out RUN_DIR --defense prune:0.9 --defense noise:0.01 [--dataset ... --rounds ...]
    gradaudit utility --out RUN_DIR --sweep configs/defenses-small.yaml   # the sweep's defenses, data and model
    gradaudit report RUN_DIR

``utility`` trains the model federatedly once per defense (and once without, the baseline) and stores the final
training loss and test accuracy in RUN_DIR's results store (:mod:`gradaudit.evaluation.utility`); runs already
stored are not repeated. ``report`` writes RUN_DIR/report.html with its tables and plots
(:mod:`gradaudit.report.html`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from .options import download_option, trust_option
from .ui import console, fmt, print_files
from .ui import progress_bar as _progress


def utility(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Run folder: results go into its results store."),
    defense: list[str] = typer.Option(
        [], "--defense", help="A defense to measure, e.g. prune:0.9 (repeatable: one training run each; "
                              "chain transforms with '+', e.g. dpsgd:1,1.1+prune:0.9). The no-defense "
                              "baseline is always measured."),
    dataset: str = typer.Option("embedded", help="embedded | fashion-mnist | cifar10 | cifar100 | ..."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder."),
    download: bool = download_option(),
    model: str = typer.Option("lenet", help="lenet | convnet | resnet18 | mlp | package.module:factory "
                                            "(with --trust-model-code)"),
    model_kwargs: Optional[str] = typer.Option(
        None, help='Model keyword arguments as JSON, e.g. \'{"width": 16}\'.'),
    clients: Optional[int] = typer.Option(None, help="Number of clients (default 4)."),
    rounds: Optional[int] = typer.Option(None, help="Communication rounds (default 300)."),
    batch_size: Optional[int] = typer.Option(None, help="Each client's minibatch per round (default 8)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (FedSGD: server step; FedAvg: local step)."),
    protocol: str = typer.Option("fedsgd", help="fedsgd | fedavg"),
    local_steps: int = typer.Option(1, help="FedAvg local steps K."),
    train_size: Optional[int] = typer.Option(None, help="Training images (default: all of a small set, "
                                                         "2000 of a large one)."),
    test_size: Optional[int] = typer.Option(None, help="Test images (default: 1000 of a large set)."),
    seed: int = typer.Option(0, help="Seed for shards, minibatches, model init and defense noise."),
    sweep: Optional[Path] = typer.Option(
        None, "--sweep", help="Take the defenses, dataset, model and protocol from this sweep file (e.g. the "
                              "run folder's sweep.yaml), so the utility rows join the sweep's cells; "
                              "--defense adds more, explicit --dataset/--model/--protocol win."),
    trust_model_code: bool = trust_option(),
) -> None:
    """Measure the utility cost of defenses (final training loss, test accuracy) and store it in --out."""
    from rich.table import Table

    from ..data import load_dataset
    from ..evaluation.analysis import utility_losses
    from ..evaluation.store import ResultsStore
    from ..evaluation.utility import DEFAULT_BATCH_SIZE, DEFAULT_CLIENTS, DEFAULT_LR, DEFAULT_ROUNDS, run_utility

    args = {"dataset": dataset, "data_root": data_root, "model": model, "model_kwargs": None,
            "protocol": protocol, "local_steps": local_steps}
    if model_kwargs:
        try:
            args["model_kwargs"] = json.loads(model_kwargs)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--model-kwargs is not valid JSON: {e}") from None
        if not isinstance(args["model_kwargs"], dict):
            raise ConfigError(f"--model-kwargs must be a JSON object, got {model_kwargs}")
    if sweep is not None:
        from ..api.utility import utility_from_sweep

        given = {k: v for k, v in args.items() if _given(ctx, k)}
        args = utility_from_sweep(sweep, defense, explicit=given)
        defense = args.pop("defenses")
    kwargs = dict(args, clients=DEFAULT_CLIENTS if clients is None else clients,
                  rounds=DEFAULT_ROUNDS if rounds is None else rounds,
                  batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
                  lr=DEFAULT_LR if lr is None else lr, train_size=train_size, test_size=test_size, seed=seed,
                  trust_code=trust_model_code)
    if download:
        for split in ("train", "test"):
            load_dataset(kwargs["dataset"], root=kwargs["data_root"], split=split, download=True)
    with _progress() as progress:
        task = {"id": None}

        def on_start(key: str, label: str) -> None:
            task["id"] = progress.add_task(f"utility / {label}", total=kwargs["rounds"], loss="-")

        def update(done: int, total: int, loss: float) -> None:
            progress.update(task["id"], completed=done, total=total, loss=f"{loss:.3g}")

        results = run_utility(out, defense, on_start=on_start, progress=update, **kwargs)
    with ResultsStore(out, create=False) as store:
        rel = {row["key"]: row for row in utility_losses(store)}
    table = Table(title=f"Utility of each defense: {kwargs['model']} on {kwargs['dataset']}, "
                        f"{kwargs['clients']} clients, {kwargs['rounds']} rounds, {kwargs['protocol']}")
    for col in ("defense", "final train loss", "utility loss", "test acc", "acc drop", "time (s)", "run"):
        table.add_column(col, justify="left" if col in ("defense", "run") else "right")
    for row, new in results:
        r = rel.get(row.key, {})
        diverged = row.config.get("diverged_at_round")
        loss = f"diverged (round {diverged})" if diverged else fmt(row.final_train_loss, 4)
        table.add_row(row.defense, loss, fmt(r.get("utility_loss"), 4),
                      fmt(row.test_accuracy, 3), fmt(r.get("accuracy_drop"), 3), fmt(row.seconds, 1),
                      "measured" if new else "stored")
    console.print(table)
    console.print(f"Stored in {out / 'results.sqlite'} ({len(results)} utility rows). "
                  f"Build the report with: gradaudit report {out}")


def _given(ctx: typer.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name == "COMMANDLINE"


def report(run_dir: Path = typer.Argument(..., help="Run folder holding results.sqlite."),
           metric: str = typer.Option("psnr", help="Rank attacks by: psnr | ssim | mse | rmse | lpips."),
           ) -> None:
    """Write RUN_DIR/report.html (self-contained) plus tables (Markdown, CSV) and plots (PNG, SVG)."""
    from ..evaluation.analysis import METRICS
    from ..report.html import report_files, write_report

    if metric not in METRICS:
        raise ConfigError(f"unknown metric '{metric}'; valid: {', '.join(METRICS)}")
    path = write_report(run_dir, metric=metric)
    print_files(report_files(run_dir))
    console.print(f"Open {path} in a browser (one self-contained file).")


def register(app: typer.Typer) -> None:
    """Add the ``utility`` and ``report`` commands to ``app``."""
    app.command()(utility)
    app.command()(report)
