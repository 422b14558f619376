"""``gradaudit observation inspect|validate|export`` (thin: :mod:`gradaudit.api.observation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import legacy_option, trust_option
from .ui import console, warn


def inspect(path: Path = typer.Argument(..., help="NAME.json, NAME.safetensors or the stem."),
            allow_legacy: bool = legacy_option()) -> None:
    """Print an observation's metadata and a per-tensor summary of the update."""
    from rich.table import Table

    from ..api.observation import inspect_observation

    obs, rows = inspect_observation(path, allow_legacy=allow_legacy)
    warn(obs.legacy)
    meta = obs.metadata()
    console.print(f"[bold]model[/bold] {meta['model']}  [bold]data[/bold] {meta['data']['name']}",
                  highlight=False)
    console.print(f"batch_size={obs.batch_size} update_kind={obs.update_kind} local_steps={obs.local_steps} "
                  f"local_lr={obs.local_lr} labels_known={meta['labels_known']} "
                  f"bn_statistics_known={meta['bn_statistics_known']} defenses={obs.defenses or 'none'}",
                  markup=False, highlight=False)
    console.print(f"threat model: {obs.threat_model.label()}", markup=False, highlight=False)
    table = Table(title="update")
    for col in ("tensor", "shape", "norm", "max |u|", "zeros %"):
        table.add_column(col, justify="left" if col == "tensor" else "right")
    for r in rows:
        table.add_row(r["tensor"], r["shape"], f"{r['norm']:.4g}", f"{r['max_abs']:.4g}",
                      f"{r['zeros_percent']:.1f}")
    console.print(table)


def validate(path: Path = typer.Argument(..., help="NAME.json, NAME.safetensors or the stem."),
             trust_model_code: bool = trust_option(), allow_legacy: bool = legacy_option()) -> None:
    """Check checksum, metadata, finiteness and that every tensor fits the declared model."""
    from ..api.observation import validate_observation

    obs = validate_observation(path, trust_code=trust_model_code, allow_legacy=allow_legacy)
    warn(obs.legacy)
    typer.echo(f"ok: {path} ({len(obs.update)} update tensors, model {obs.model.name}, B={obs.batch_size})")


def export(
    out: Path = typer.Option(..., "--out", help="Output stem (writes OUT.safetensors + OUT.json)."),
    weights: Path = typer.Option(..., help="Broadcast weights theta_0 (safetensors, parameter names)."),
    returned: Optional[Path] = typer.Option(None, help="Client's returned weights theta_K (FedAvg)."),
    gradient: Optional[Path] = typer.Option(None, help="Client's mean gradient (FedSGD)."),
    model: str = typer.Option(..., help="Model name or package.module:factory (with --trust-model-code)."),
    num_classes: int = typer.Option(..., help="Number of classes."),
    input_shape: str = typer.Option(..., help="C,H,W of one input, e.g. 3,32,32."),
    batch_size: int = typer.Option(..., help="Number of samples behind the update."),
    local_steps: int = typer.Option(1, help="FedAvg local steps K."),
    local_lr: Optional[float] = typer.Option(None, help="FedAvg local learning rate."),
    mean: str = typer.Option("0.5,0.5,0.5", help="Input normalisation mean per channel."),
    std: str = typer.Option("0.5,0.5,0.5", help="Input normalisation std per channel."),
    dataset: str = typer.Option("unknown", help="Name of the data, for the record."),
    trust_model_code: bool = trust_option(),
) -> None:
    """Build an observation from weight files captured in another framework."""
    from ..api.observation import export_observation

    st, js = export_observation(out, weights=weights, returned=returned, gradient=gradient, model=model,
                                num_classes=num_classes, input_shape=input_shape, batch_size=batch_size,
                                local_steps=local_steps, local_lr=local_lr, mean=mean, std=std,
                                dataset=dataset, trust_code=trust_model_code)
    typer.echo(f"wrote {st} and {js}")


def register(app: typer.Typer) -> None:
    obs_app = typer.Typer(help="Inspect, validate and export captured updates (safetensors + JSON).",
                          no_args_is_help=True)
    obs_app.command("inspect")(inspect)
    obs_app.command("validate")(validate)
    obs_app.command("export")(export)
    app.add_typer(obs_app, name="observation")
