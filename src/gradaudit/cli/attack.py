"""``gradaudit demo``, ``gradaudit attack`` and ``gradaudit list`` (thin: :mod:`gradaudit.api.attack`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .options import Known, download_option, legacy_option, trust_option
from .ui import console, print_files, progress_bar, run_starter, summary_table, warn


def _overrides(set_: list[str], flags: dict, defense: list[str]) -> list[str]:
    """``--set`` items, then one dotted override per flag given (flags win over the config file)."""
    overrides = list(set_)
    for key, value in flags.items():
        if value is not None:
            overrides.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    if defense:
        overrides.append("defenses=" + json.dumps(list(defense)))  # JSON is YAML: "dpsgd:1.0,1.1" stays one item
    return overrides


def demo(out: Path = typer.Option(Path("gradaudit-out/demo"), "--out", help="Output folder."),
         iterations: Optional[int] = typer.Option(None, help="Override the attack's iterations (quicker, "
                                                             "worse)."),
         ) -> None:
    """Attack the embedded image set with and without a simple defense (offline, CPU, < 3 minutes)."""
    from ..api.attack import run_demo

    with progress_bar() as progress:
        result = run_demo(out, iterations, on_start=run_starter(progress))
    print_files(result.paths)
    console.print(summary_table(result.rows, title=result.title))
    console.print(f"Total {result.seconds:.0f} s. Open {result.paths['grid']} to see the reconstructions.")


def attack(
    out: Path = typer.Option(..., "--out", help="Output folder."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML run config."),
    set_: list[str] = typer.Option([], "--set", help="Dotted override, e.g. attack.iterations=200 (repeatable)."),
    observation: Optional[Path] = typer.Option(None, "--observation",
                                               help="Attack a captured update (NAME.safetensors + NAME.json)."),
    dataset: Optional[str] = typer.Option(None, help="embedded | fashion-mnist | cifar10 | cifar100 | "
                                                     "image-folder | lfw"),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder."),
    download: bool = download_option(),
    model: Optional[str] = typer.Option(None, help="lenet | convnet | resnet18 | mlp | package.module:factory "
                                                   "(with --trust-model-code)"),
    batch_size: Optional[int] = typer.Option(None, help="Private batch size B."),
    protocol: Optional[str] = typer.Option(None, help="fedsgd (gradient) | fedavg (local update)."),
    local_steps: Optional[int] = typer.Option(None, help="FedAvg local steps K."),
    local_lr: Optional[float] = typer.Option(None, help="FedAvg local learning rate."),
    labels: Optional[Known] = typer.Option(None, help="Does the server know the labels?"),
    bn_stats: Optional[Known] = typer.Option(None, help="Does the server know the batch's BN statistics?"),
    attack_name: Optional[str] = typer.Option(None, "--attack", help="dlg | inverting-gradients | "
                                              "gradinversion | gi-z | gi-w | gias | dip | ... (gradaudit list)"),
    iterations: Optional[int] = typer.Option(None, help="Attack iterations."),
    restarts: Optional[int] = typer.Option(None, help="Random restarts (vectorised)."),
    lr: Optional[float] = typer.Option(None, help="Attack step size."),
    tune: Optional[str] = typer.Option(None, help="Self-tuning of the gradient-matching presets: auto "
                                                  "(candidate grid, successive halving, observation-only "
                                                  "selection; their default) | off (the fixed recipe)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Wall-clock seconds for the "
                                                "attack, tuning included (the iterations are planned to fit)."),
    generator: Optional[str] = typer.Option(None, help="Prior checkpoint for gi-z | gi-w | gias "
                                                         "(gradaudit prior train / meta-learn)."),
    force: bool = typer.Option(False, "--force", help="Use a prior even if it was trained on the attacked "
                                                      "images."),
    defense: list[str] = typer.Option([], "--defense", help="Update transform, e.g. noise:0.01 (repeatable)."),
    seed: Optional[int] = typer.Option(None, help="Seed for data choice, model init and attack."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda"),
    save_observation: bool = typer.Option(True, help="Also save the observation the attack saw."),
    trust_model_code: bool = trust_option(),
    allow_legacy: bool = legacy_option(),
) -> None:
    """Attack one private batch (or a captured observation) and write grid, metrics and config to --out."""
    from ..api.attack import attack_captured, audit_runs
    from ..config import load_config
    from ..evaluation.records import summarize

    flags = {"data.name": dataset, "data.root": data_root, "data.download": True if download else None,
             "model.name": model, "threat.batch_size": batch_size, "threat.protocol": protocol,
             "threat.local_steps": local_steps, "threat.local_lr": local_lr,
             "threat.labels_known": None if labels is None else labels == Known.known,
             "threat.bn_statistics_known": None if bn_stats is None else bn_stats == Known.known,
             "attack.preset": attack_name, "attack.iterations": iterations, "attack.restarts": restarts,
             "attack.lr": lr, "attack.tune": tune, "attack.time_budget": time_budget,
             "attack.generator": generator,
             "attack.allow_train_overlap": True if force else None, "seed": seed, "device": device}
    cfg = load_config(config, _overrides(set_, flags, defense))
    if observation is not None:
        with progress_bar() as progress:
            rec, obs, paths, fit = attack_captured(observation, cfg, out, on_start=run_starter(progress),
                                                   trust_code=trust_model_code, allow_legacy=allow_legacy)
        warn(obs.legacy)
        print_files(paths)
        console.print(f"threat model: {obs.threat_model.label()}", markup=False, highlight=False)
        console.print(f"No ground truth for a captured observation: scores not computed. "
                      f"Final matching loss {rec.matching_loss:.4g} in {rec.seconds:.1f} s.")
        if fit is not None:
            console.print(fit.describe(), markup=False, highlight=False)
        return
    label = ", ".join(cfg.defenses) or "no defense"
    with progress_bar() as progress:
        results, paths = audit_runs([cfg], out, labels=[label], on_start=run_starter(progress),
                                    save_observations=save_observation, trust_code=trust_model_code)
    print_files(paths)
    console.print(summary_table([summarize(label, results)], title=f"{cfg.attack.preset} on {cfg.model.name}"))
    console.print(f"threat model: {results[0].observation.threat_model.label()}", markup=False, highlight=False)
    for r in results:
        if r.fit is not None:
            console.print(r.fit.describe(), markup=False, highlight=False)


def list_(threats: bool = typer.Option(False, "--threats", help="Which attack applies to which threat model "
                                                                 "(server, labels, prior, batch, aggregation)."),
          ) -> None:
    """List the datasets, models, attacks and defenses by name (--threats: the attacks' threat models)."""
    from ..attacks.registry import attack_names
    from ..data import DATASETS
    from ..defenses.registry import DEFENSES
    from ..models.registry import MALICIOUS_MODELS, MODELS

    if threats:
        from rich.table import Table

        from ..api.attack import attack_threats

        rows = attack_threats()
        table = Table(title="attacks by threat model (honest: sees the update of the model it sends; malicious: "
                            "sends a changed model)")
        for column in rows[0]:
            table.add_column(column, overflow="fold", no_wrap=column in ("attack", "server"))
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        console.print(table)
        return
    models = [f"{m} (malicious)" if m in MALICIOUS_MODELS else m for m in MODELS] + ["package.module:factory"]
    for title, names in (("datasets", DATASETS), ("models", models),
                         ("attacks", attack_names()), ("defenses", DEFENSES)):
        console.print(f"[bold]{title}[/bold]: {', '.join(names)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(demo)
    app.command()(attack)
    app.command("list")(list_)
