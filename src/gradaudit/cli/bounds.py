"""``gradaudit bounds``: the empirical side of seed 002's two-layer theory (Table 1 directions, Table 2 errors).

Runs :func:`gradaudit.theory.two_layer.run_bounds` (the tensor method on random two-layer nets against d, m, B
and the strength of dropout, noise and pruning, several seeds each), prints the points, the fitted scaling
exponents beside the directions the seed states, and the dropout-as-width comparison; writes ``bounds.csv``,
``exponents.csv``, ``bounds.json`` and ``bounds.png`` into ``--out``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError


def _floats(text: Optional[str], name: str) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated numbers, got '{text}'") from None


def bounds(
    out: Path = typer.Option(Path("gradaudit-out/bounds"), "--out", help="Output folder."),
    full: bool = typer.Option(False, "--full", help="Denser grid, 16 seeds (about a minute)."),
    seeds: Optional[int] = typer.Option(None, help="Random nets per point (default 3, --full 16)."),
    d_values: Optional[str] = typer.Option(None, "--d", help="Feature dimensions, e.g. 10,20,40,80."),
    width_values: Optional[str] = typer.Option(None, "--m", help="Widths, e.g. 500,1000,2000,4000."),
    batch_values: Optional[str] = typer.Option(None, "--batch", help="Batch sizes, e.g. 2,4,8."),
    dropout: Optional[str] = typer.Option(None, help="Dropout rates p."),
    noise: Optional[str] = typer.Option(None, help="Noise sigma, relative to the gradient's rms."),
    prune: Optional[str] = typer.Option(None, help="Pruning ratios p."),
    subspace: str = typer.Option("moment,gradients", help="Subspace estimates: moment, gradients or both."),
) -> None:
    """Feature reconstruction error of the tensor method on random two-layer nets; fitted exponents."""
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ..report.bounds import write_bounds
    from ..theory.two_layer import BoundsConfig, dropout_equivalence, run_bounds

    cfg = BoundsConfig.full() if full else BoundsConfig()
    overrides = {"d_values": _floats(d_values, "d"), "width_values": _floats(width_values, "m"),
                 "batch_values": _floats(batch_values, "batch"), "dropout": _floats(dropout, "dropout"),
                 "noise": _floats(noise, "noise"), "prune": _floats(prune, "prune")}
    for key, values in overrides.items():
        if values is not None:
            if not values:
                raise ConfigError(f"--{key} needs at least one value")
            integer = key in ("d_values", "width_values", "batch_values")
            setattr(cfg, key, tuple(int(v) for v in values) if integer else values)
    if seeds is not None:
        cfg.seeds = seeds
    cfg.subspaces = tuple(s.strip() for s in subspace.split(",") if s.strip())
    cfg.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: one thread is faster and leaves the machine to others
    console = Console()
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("two-layer nets", total=None)
            result = run_bounds(cfg, progress=lambda done, n: bar.update(task, completed=done, total=n))
    finally:
        torch.set_num_threads(threads)
    keys = [f"{metric}/{sub}" for sub in cfg.subspaces for metric in ("span", "feature")]
    points = Table(title=f"Tensor-method feature reconstruction error, mean over {cfg.seeds} seeds "
                         f"(base d={cfg.d}, m={cfg.width}, B={cfg.batch}; span = seed 002 metric)")
    for col in ["axis", "value", "d", "m", "B", *keys, "random"]:
        points.add_column(col, justify="right")
    for r in result.rows:
        points.add_row(r["axis"], f"{r['value']:g}", str(r["d"]), str(r["m"]), str(r["B"]),
                       *[f"{r[k]:.3g}" for k in keys], f"{r['random']:.3g}")
    console.print(points)
    exps = Table(title="Fitted scaling exponents (log-log least squares) beside seed 002's directions")
    for col in ("axis", "error", "exponent", "R^2", "seed 002 says", "agrees", "note"):
        exps.add_column(col)
    for e in result.exponents:
        exps.add_row(e["axis"], e["error"], "-" if e["exponent"] is None else f"{e['exponent']:+.2f}",
                     "-" if e["r2"] is None else f"{e['r2']:.2f}", e["seed says"],
                     {True: "yes", False: "NO", None: "-"}[e["agrees"]], e["note"])
    console.print(exps)
    drop = Table(title="Dropout p at width m0 against no defense at width (1-p) m0")
    for col in ("error", "p", "(1-p) m0", "dropout p", "no defense, width (1-p) m0"):
        drop.add_column(col, justify="right")
    for k in keys:
        for p, eff, err, match in dropout_equivalence(result, k):
            drop.add_row(k, f"{p:g}", f"{eff:g}", f"{err:.3g}", "-" if match is None else f"{match:.3g}")
    console.print(drop)
    paths = write_bounds(result, out)
    console.print(f"{len(result.rows)} points x {cfg.seeds} seeds in {result.seconds:.1f} s. Files: "
                  + ", ".join(str(p) for p in paths.values()), markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(bounds)
