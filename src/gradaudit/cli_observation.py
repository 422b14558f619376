"""``gradaudit observation inspect|validate|export``: captured updates from any framework.

An observation is ``NAME.safetensors`` (tensors: ``parameter/<name>``, ``update/<name>``, ``buffer/<name>``,
optional ``labels`` and ``bn/<i>/mean|var``) plus ``NAME.json`` (format, version, model spec, data
normalisation, batch size, update kind, local steps and lr, what the server knows, defenses, extras, and the
SHA-256 of the tensor file). ``export`` builds one from two weight files of any framework saved as
safetensors (the broadcast weights theta_0 and the client's returned weights theta_K, FedAvg style), or from
theta_0 and a gradient file (FedSGD style).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import ConfigError, ObservationError


def _load_tensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ConfigError(f"file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, Exception) as e:  # noqa: BLE001
        raise ObservationError(f"{path} is not a valid safetensors file: {e}") from None


def register(app: typer.Typer) -> None:
    obs_app = typer.Typer(help="Inspect, validate and export captured updates (safetensors + JSON).",
                          no_args_is_help=True)

    @obs_app.command("inspect")
    def inspect(path: Path = typer.Argument(..., help="NAME.json, NAME.safetensors or the stem.")) -> None:
        """Print an observation's metadata and a per-tensor summary of the update."""
        from rich.console import Console
        from rich.table import Table

        from .threat.observation import Observation

        obs = Observation.load(path)
        console = Console()
        meta = obs.metadata()
        console.print(f"[bold]model[/bold] {meta['model']}  [bold]data[/bold] {meta['data']['name']}")
        console.print(f"batch_size={obs.batch_size} update_kind={obs.update_kind} local_steps={obs.local_steps} "
                      f"local_lr={obs.local_lr} labels_known={meta['labels_known']} "
                      f"bn_statistics_known={meta['bn_statistics_known']} defenses={obs.defenses or 'none'}")
        table = Table(title="update")
        for col in ("tensor", "shape", "norm", "max |u|", "zeros %"):
            table.add_column(col, justify="left" if col == "tensor" else "right")
        for name, u in obs.update.items():
            table.add_row(name, "x".join(map(str, u.shape)), f"{float(u.norm()):.4g}", f"{float(u.abs().max()):.4g}",
                          f"{100.0 * float((u == 0).float().mean()):.1f}")
        console.print(table)

    @obs_app.command("validate")
    def validate(path: Path = typer.Argument(..., help="NAME.json, NAME.safetensors or the stem.")) -> None:
        """Check checksum, metadata, finiteness and that every tensor fits the declared model."""
        from .models.registry import build_model
        from .threat.observation import Observation

        obs = Observation.load(path)
        obs.check_model(build_model(obs.model))
        typer.echo(f"ok: {path} ({len(obs.update)} update tensors, model {obs.model.name}, B={obs.batch_size})")

    @obs_app.command("export")
    def export(
        out: Path = typer.Option(..., "--out", help="Output stem (writes OUT.safetensors + OUT.json)."),
        weights: Path = typer.Option(..., help="Broadcast weights theta_0 (safetensors, parameter names)."),
        returned: Optional[Path] = typer.Option(None, help="Client's returned weights theta_K (FedAvg)."),
        gradient: Optional[Path] = typer.Option(None, help="Client's mean gradient (FedSGD)."),
        model: str = typer.Option(..., help="Model name or package.module:factory."),
        num_classes: int = typer.Option(..., help="Number of classes."),
        input_shape: str = typer.Option(..., help="C,H,W of one input, e.g. 3,32,32."),
        batch_size: int = typer.Option(..., help="Number of samples behind the update."),
        local_steps: int = typer.Option(1, help="FedAvg local steps K."),
        local_lr: Optional[float] = typer.Option(None, help="FedAvg local learning rate."),
        mean: str = typer.Option("0.5,0.5,0.5", help="Input normalisation mean per channel."),
        std: str = typer.Option("0.5,0.5,0.5", help="Input normalisation std per channel."),
        dataset: str = typer.Option("unknown", help="Name of the data, for the record."),
    ) -> None:
        """Build an observation from weight files captured in another framework."""
        from .models.registry import ModelSpec, build_model
        from .threat.observation import DataSpec, Observation

        if (returned is None) == (gradient is None):
            raise ConfigError("give exactly one of --returned (FedAvg theta_K) or --gradient (FedSGD)")
        try:
            shape = tuple(int(s) for s in input_shape.split(","))
            mean_t = tuple(float(s) for s in mean.split(","))
            std_t = tuple(float(s) for s in std.split(","))
        except ValueError as e:
            raise ConfigError(f"bad --input-shape/--mean/--std: {e}") from None
        if len(shape) != 3:
            raise ConfigError(f"--input-shape needs C,H,W, got '{input_shape}'")
        spec = ModelSpec(model, num_classes, shape)
        net = build_model(spec)
        theta0 = _load_tensors(weights)
        names = [k for k, _ in net.named_parameters()]
        buffers = {k: theta0[k] for k, _ in net.named_buffers() if k in theta0}
        params = {k: theta0[k] for k in names if k in theta0}
        if returned is not None:
            if local_lr is None:
                raise ConfigError("--returned (FedAvg) needs --local-lr")
            theta_k = _load_tensors(returned)
            missing = [k for k in names if k not in theta_k]
            if missing:
                raise ObservationError(f"{returned} lacks parameter '{missing[0]}'")
            update = {k: params[k] - theta_k[k] for k in names if k in params}
            kind = "local_update"
        else:
            grads = _load_tensors(gradient)
            update = {k: grads[k] for k in names if k in grads}
            kind = "gradient"
        obs = Observation(model=spec, parameters=params, update=update, batch_size=batch_size,
                          data=DataSpec(dataset, mean_t, std_t), buffers=buffers, update_kind=kind,
                          local_steps=local_steps if kind == "local_update" else 1,
                          local_lr=local_lr if kind == "local_update" else None)
        obs.check_model(net)
        st, js = obs.save(out)
        typer.echo(f"wrote {st} and {js}")

    app.add_typer(obs_app, name="observation")
