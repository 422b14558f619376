"""Command-line interface (thin: every command calls the Python API).

    gradaudit demo [--out DIR]
    gradaudit attack --out DIR [--config FILE] [--set key=value ...] [options]
    gradaudit attack --observation FILE --out DIR [--attack PRESET ...]
    gradaudit list

Bad input exits with status 2 and one line on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .errors import ConfigError, GradauditError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="gradaudit: how much of a client's private data can be rebuilt from its update?")
console = Console(width=None if sys.stdout.isatty() else 110)
_state = {"debug": False}


class Known(str, Enum):
    known = "known"
    unknown = "unknown"


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")):
    _state["debug"] = debug


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def _callback(progress: Progress, task):
    def update(done: int, total: int, loss: float) -> None:
        progress.update(task, completed=done, total=total, loss=f"{loss:.3g}")
    return update


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _summary(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("defense", "attack", "B", "images", "PSNR (dB)", "SSIM", "label acc", "time (s)"):
        text = col in ("defense", "attack")
        table.add_column(col, justify="left" if text else "right", no_wrap=text,
                         min_width=max([len(str(r[col])) for r in rows] + [len(col)]) if text else None)
    for r in rows:
        table.add_row(r["defense"], r["attack"], str(r["B"]), str(r["images"]), _fmt(r["psnr"]), _fmt(r["ssim"], 3),
                      _fmt(r["label_acc"]), _fmt(r["seconds"], 1))
    return table


def _print_files(paths: dict[str, Path]) -> None:
    console.print("[bold]Files:[/bold]")
    for key, p in paths.items():
        console.print(f"  {key:16s} {p}")


def _run_many(configs, labels):
    from .evaluation.cell import prepare, run_attack

    prepared = [prepare(c) for c in configs]  # validate every run before any work starts
    results = []
    with _progress() as progress:
        for label, run in zip(labels, prepared):
            task = progress.add_task(f"{run.config.attack.preset} / {label}", total=1, loss="-")
            results.append(run_attack(run.config, _callback(progress, task), prepared=run))
    return results


@app.command()
def demo(out: Path = typer.Option(Path("gradaudit-out/demo"), "--out", help="Output folder."),
         iterations: Optional[int] = typer.Option(None, help="Override the attack's iterations (quicker, worse)."),
         ) -> None:
    """Attack the embedded image set with and without a simple defense (offline, CPU, < 3 minutes)."""
    from .config import load_config
    from .report.run_files import summarize, write_results

    images = [3, 20, 45, 60]  # one crop each of four different photos
    conditions = [("no defense", []), ("noise:0.01", ["defenses=[noise:0.01]"])]
    base = ["data.name=embedded", "threat.batch_size=1", "model.name=lenet", "attack.preset=dlg",
            "attack.iterations=100", "threat.labels_known=false"]
    if iterations is not None:
        base.append(f"attack.iterations={iterations}")
    configs, labels = [], []
    for label, extra in conditions:
        for i in images:
            configs.append(load_config(overrides=base + [f"data.indices=[{i}]"] + extra))
            labels.append(label)
    t0 = time.perf_counter()
    results = _run_many(configs, labels)
    paths = write_results(out, results, labels=labels, extra={"total_seconds": time.perf_counter() - t0})
    _print_files(paths)
    rows = [summarize(label, [r for l, r in zip(labels, results) if l == label]) for label, _ in conditions]
    console.print(_summary(rows, title="DLG on LeNet, 4 embedded images one at a time, labels recovered (iDLG)"))
    console.print(f"Total {time.perf_counter() - t0:.0f} s. Open {paths['grid']} to see the reconstructions.")


@app.command()
def attack(
    out: Path = typer.Option(..., "--out", help="Output folder."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML run config."),
    set_: list[str] = typer.Option([], "--set", help="Dotted override, e.g. attack.iterations=200 (repeatable)."),
    observation: Optional[Path] = typer.Option(None, "--observation",
                                               help="Attack a captured update (NAME.safetensors + NAME.json)."),
    dataset: Optional[str] = typer.Option(None, help="embedded | fashion-mnist | cifar10 | cifar100 | image-folder | lfw"),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder."),
    model: Optional[str] = typer.Option(None, help="lenet | convnet | resnet18 | mlp | package.module:factory"),
    batch_size: Optional[int] = typer.Option(None, help="Private batch size B."),
    protocol: Optional[str] = typer.Option(None, help="fedsgd (gradient) | fedavg (local update)."),
    local_steps: Optional[int] = typer.Option(None, help="FedAvg local steps K."),
    local_lr: Optional[float] = typer.Option(None, help="FedAvg local learning rate."),
    labels: Optional[Known] = typer.Option(None, help="Does the server know the labels?"),
    bn_stats: Optional[Known] = typer.Option(None, help="Does the server know the batch's BN statistics?"),
    attack_name: Optional[str] = typer.Option(None, "--attack", help="dlg | inverting-gradients | gradinversion | "
                                                                      "gi-z | gi-w | gias | dip | ... (gradaudit list)"),
    iterations: Optional[int] = typer.Option(None, help="Attack iterations."),
    restarts: Optional[int] = typer.Option(None, help="Random restarts (vectorised)."),
    lr: Optional[float] = typer.Option(None, help="Attack step size."),
    generator: Optional[str] = typer.Option(None, help="Prior checkpoint for gi-z | gi-w | gias "
                                                         "(gradaudit prior train / meta-learn)."),
    force: bool = typer.Option(False, "--force", help="Use a prior even if it was trained on the attacked images."),
    defense: list[str] = typer.Option([], "--defense", help="Update transform, e.g. noise:0.01 (repeatable)."),
    seed: Optional[int] = typer.Option(None, help="Seed for data choice, model init and attack."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda"),
    save_observation: bool = typer.Option(True, help="Also save the observation the attack saw."),
) -> None:
    """Attack one private batch (or a captured observation) and write grid, metrics and config to --out."""
    from .config import load_config
    from .report.run_files import summarize, write_results

    overrides = list(set_)
    flag_map = {"data.name": dataset, "data.root": data_root, "model.name": model, "threat.batch_size": batch_size,
                "threat.protocol": protocol, "threat.local_steps": local_steps, "threat.local_lr": local_lr,
                "threat.labels_known": None if labels is None else labels == Known.known,
                "threat.bn_statistics_known": None if bn_stats is None else bn_stats == Known.known,
                "attack.preset": attack_name, "attack.iterations": iterations, "attack.restarts": restarts,
                "attack.lr": lr, "attack.params.generator": generator,
                "attack.params.allow_train_overlap": True if force else None, "seed": seed, "device": device}
    for key, value in flag_map.items():
        if value is not None:
            overrides.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    if defense:
        overrides.append("defenses=" + json.dumps(list(defense)))  # JSON is YAML: "dpsgd:1.0,1.1" stays one item
    cfg = load_config(config, overrides)
    if observation is not None:
        _attack_observation(cfg, observation, out)
        return
    results = _run_many([cfg], [", ".join(cfg.defenses) or "no defense"])
    paths = write_results(out, results, save_observations=save_observation)
    _print_files(paths)
    label = ", ".join(cfg.defenses) or "no defense"
    console.print(_summary([summarize(label, results)], title=f"{cfg.attack.preset} on {cfg.model.name}"))


def _attack_observation(cfg, path: Path, out: Path) -> None:
    from safetensors.torch import save_file

    from .attacks.registry import build_attack
    from .evaluation.cell import resolve_device
    from .report.grid import save_reconstruction_grid
    from .report.run_files import reconstruction_record
    from .threat.observation import Observation

    obs = Observation.load(path)
    device = resolve_device(cfg.device)
    attack_ = build_attack(cfg.attack.preset, device=device, seed=cfg.seed, **cfg.attack.overrides())
    with _progress() as progress:
        task = progress.add_task(f"{cfg.attack.preset} / {path.name}", total=1, loss="-")
        rec = attack_.reconstruct(obs, progress=_callback(progress, task))
    out.mkdir(parents=True, exist_ok=True)
    paths = {"grid": save_reconstruction_grid([("reconstruction", rec.images, None)], out / "grid.png")}
    (out / "metrics.json").write_text(json.dumps({"observation": str(path), "ground_truth": None,
                                                  "scores": None, "reconstruction": reconstruction_record(rec)},
                                                 indent=2, default=str))
    paths["metrics"] = out / "metrics.json"
    (out / "config.yaml").write_text(cfg.to_yaml())
    paths["config"] = out / "config.yaml"
    tensors = {"images": rec.images.contiguous()}
    if rec.labels is not None:
        tensors["labels"] = rec.labels.to("cpu").long().contiguous()
    save_file(tensors, str(out / "reconstructions.safetensors"))
    paths["reconstructions"] = out / "reconstructions.safetensors"
    _print_files(paths)
    console.print(f"No ground truth for a captured observation: scores not computed. "
                  f"Final matching loss {rec.matching_loss:.4g} in {rec.seconds:.1f} s.")


@app.command("list")
def list_() -> None:
    """List the datasets, models, attacks and defenses by name."""
    from .attacks.registry import attack_names
    from .data import DATASETS
    from .defenses.registry import DEFENSES
    from .models.registry import MODELS

    for title, names in (("datasets", DATASETS), ("models", list(MODELS) + ["package.module:factory"]),
                         ("attacks", attack_names()), ("defenses", DEFENSES)):
        console.print(f"[bold]{title}[/bold]: {', '.join(names)}", soft_wrap=True)


from .cli_observation import register as _register_observation  # noqa: E402

_register_observation(app)
from .cli_vulnerability import register as _register_vulnerability  # noqa: E402

_register_vulnerability(app)
from .cli_evaluate import register as _register_evaluate  # noqa: E402
_register_evaluate(app)

from .cli_report import register as _register_report  # noqa: E402
_register_report(app)

from .cli_bounds import register as _register_bounds  # noqa: E402
_register_bounds(app)
from .cli_prior import register as _register_prior  # noqa: E402
_register_prior(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors -> one line on stderr and exit status 2 (``--debug`` re-raises)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=argv, standalone_mode=False, prog_name="gradaudit")
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except GradauditError as e:
        if "--debug" in argv or _state["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # click's usage errors (typer vendors click; match them by their interface)
        if hasattr(e, "format_message") and hasattr(e, "exit_code") and "--debug" not in argv:
            message = e.format_message()
            if not message:  # no command given: the help was printed
                return 0
            print(f"error: {message}", file=sys.stderr)
            return int(e.exit_code) or 2
        raise
    return result if isinstance(result, int) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _entry() -> None:
    sys.exit(main())
