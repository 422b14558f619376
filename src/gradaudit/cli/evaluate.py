"""``gradaudit evaluate SWEEP_YAML --out RUN_DIR``: run a sweep (attacks x defenses x batch sizes x samples).

    gradaudit evaluate configs/sweep-tiny.yaml --out runs/tiny                      # 2 local worker processes
    gradaudit evaluate sweep.yaml --out runs/x --workers 1                          # in this process
    gradaudit evaluate sweep.yaml --out runs/x --executor ray                       # a local Ray instance
    gradaudit evaluate sweep.yaml --out runs/x --executor ray --ray-address HOST:6379  # join a cluster

Rerunning the same command resumes: cells already in RUN_DIR/results.sqlite are skipped (add --retry-failed
to run the failed ones again). Bad input (unknown
keys, defenses, sizes) exits with status 2 before any cell runs; a cell that fails is recorded as failed and does
not stop the sweep (the exit status stays 0: failed cells are results too).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .options import trust_option
from .ui import console, fmt


class ExecutorName(str, Enum):
    local = "local"
    ray = "ray"


def summary_tables(summary) -> list[Table]:
    """The run table (cells done / failed / skipped, time) and the per-defense table (strongest attack)."""
    run = Table(title=f"Sweep {summary.run_dir}")
    for col in ("cells", "done", "failed", "skipped", "executor", "time (s)", "cells/min"):
        run.add_column(col, justify="left" if col == "executor" else "right")
    cpm = summary.cells_per_minute
    run.add_row(str(summary.total), str(summary.done), str(summary.failed), str(summary.skipped),
                f"{summary.executor} x{summary.workers}", f"{summary.seconds:.1f}", fmt(cpm, 1))
    best = Table(title="Strongest attack per defense (highest mean PSNR over samples = lowest error)")
    for col in ("defense", "B", "strongest attack", "PSNR (dB)", "SSIM", "label acc", "done", "failed"):
        best.add_column(col, justify="left" if col in ("defense", "strongest attack") else "right",
                        no_wrap=col == "defense")
    for r in summary.rows:
        best.add_row(r["defense"], str(r["batch_size"]), r["attack"] or "-", fmt(r["psnr"]), fmt(r["ssim"], 3),
                     fmt(r["label_acc"]), f"{r['done']}/{r['total']}",
                     f"[red]{r['failed']}[/red]" if r["failed"] else "0")
    return [run, best]


def evaluate(
    sweep_yaml: Path = typer.Argument(..., help="Sweep file (base, attacks, defenses, batch_sizes, samples)."),
    out: Path = typer.Option(..., "--out", help="Run folder: results.sqlite, sweep.yaml, cells/."),
    workers: int = typer.Option(2, "--workers", min=1, help="Parallel cells (worker processes / Ray CPUs)."),
    executor: ExecutorName = typer.Option(ExecutorName.local, "--executor", help="local | ray"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="Join a running Ray cluster (with --executor ray)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="Torch threads per worker (default: cores // workers)."),
    set_: list[str] = typer.Option([], "--set", help="Dotted override of the sweep, e.g. "
                                                     "base.attack.iterations=50 (repeatable)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="Run again the cells an earlier run recorded as failed."),
    trust_model_code: bool = trust_option(),
) -> None:
    """Run a sweep of attacks x defenses x batch sizes into --out, resuming whatever is already there."""
    from ..evaluation.runner import run_sweep
    from ..evaluation.sweep import load_sweep

    sweep = load_sweep(sweep_yaml, set_)
    summary = run_sweep(sweep, out, executor=executor.value, workers=workers, ray_address=ray_address,
                        progress=progress, threads=threads, console=console,
                        retry_failed=retry_failed, trust_code=trust_model_code)
    if summary.retried:
        console.print(f"retried {summary.retried} cell(s) recorded as failed by an earlier run")
    for table in summary_tables(summary):
        console.print(table)
    for f in summary.failures[:10]:
        console.print(f"[red]failed[/red] {f['cell']} after {f['attempts']} attempt(s): {f['error']}")
    if len(summary.failures) > 10:
        console.print(f"... and {len(summary.failures) - 10} more failed cells (status 'failed' in the store)")
    state = "complete" if summary.complete else "incomplete"
    console.print(f"Sweep {state}: {summary.stored_done} done, {summary.stored_failed} failed of "
                  f"{summary.total} cells. Results: {out / 'results.sqlite'}, images: {out / 'cells'}/")


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to the gradaudit CLI."""
    app.command("evaluate")(evaluate)
