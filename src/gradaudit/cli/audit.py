"""``gradaudit audit DEPLOYMENT.yaml --out DIR``: audit a deployment in one command.

    gradaudit audit configs/audit-demo.yaml --out gradaudit-out/audit-demo
    gradaudit audit my-deployment.yaml --out audits/round-120 --workers 4 --executor ray

Rerunning the same command resumes (the victim, the ranking, the finished cells and utility runs are reused).
The verdict lines are printed; ``DIR/audit.html`` is the report (verdict, at-risk samples, frontier,
recommendation, threat model, what was not tried).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .evaluate import ExecutorName
from .options import trust_option
from .ui import console


def audit(
    deployment: Path = typer.Argument(..., help="Deployment file (model, data, clients, audit, defenses, ...)."),
    out: Path = typer.Option(..., "--out", help="Audit folder: audit.html, verdict.json, results.sqlite, ..."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          help="Parallel attack cells (default: the deployment's workers)."),
    executor: ExecutorName = typer.Option(ExecutorName.local, "--executor", help="local | ray"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join a running Ray cluster."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads per worker."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    trust_model_code: bool = trust_option(),
) -> None:
    """Audit a deployment: rank the clients' samples by risk, attack the riskiest under every candidate defense,
    measure utility and epsilon, and recommend a defense."""
    from ..api.audit import audit_deployment

    result = audit_deployment(deployment, out, workers=workers, executor=executor.value, ray_address=ray_address,
                              threads=threads, trust_code=trust_model_code, progress=progress, console=console,
                              log=console.print)
    for line in result.verdict.lines():
        console.print(line)
    if result.verdict.fedavg_gain:
        g = result.verdict.fedavg_gain
        console.print(f"FedAvg-aware attack vs full-batch assumption: {g['fedavg_leakage_psnr']:.2f} vs "
                      f"{g['full_batch_psnr']:.2f} dB ({g['gain_db']:+.2f} dB, better on {g['wins']} of "
                      f"{g['pairs']})")
    console.print(f"Report: {result.report}")


def register(app: typer.Typer) -> None:
    """Add the ``audit`` command to the gradaudit CLI."""
    app.command("audit")(audit)
