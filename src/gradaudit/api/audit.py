"""``gradaudit audit DEPLOYMENT.yaml --out DIR``: audit a deployment in one call.

Steps (each resumable; a rerun after a kill redoes only what is missing, see
:mod:`gradaudit.evaluation.deployment.plan`): the data split and the victim (the user's weights or one trained
on the public part), the risk ranking, the strongest attacks per candidate defense on the audited samples (the
sweep store, local or Ray workers, progress with ETA), utility per defense through the same client path, epsilon
for DP-SGD, then the verdict (``verdict.json``) and the report (``audit.html``).

Everything that can be refused is checked before any file is created: the deployment file, the output folder,
the data split, the model (a ``package.module:factory`` only with ``trust_code``), the user's weights (one line
when they do not fit the model), the attacks and defenses of every cell, the utility options.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..checks import check_run_dir
from ..errors import ConfigError
from ..evaluation.deployment.config import Deployment, load_deployment, parse_deployment
from ..evaluation.deployment.plan import (RiskRanking, attack_budget, audit_attacks, audit_batches, audit_sweep,
                                          check_risk_options, check_user_weights, model_spec, prepare_victim,
                                          rank_risk, split_data)
from ..evaluation.deployment.verdict import Verdict, build_verdict
from ..evaluation.runner import SweepSummary, run_sweep
from ..evaluation.store import ResultsStore
from ..evaluation.sweep import expand, plan as plan_cells
from ..evaluation.utility import run_utility, utility_chains
from ..report.deployment import AUDIT_PAGE, write_deployment_report

Log = Callable[[str], None]


@dataclass
class AuditResult:
    out: Path
    verdict: Verdict
    report: Path
    ranking: RiskRanking
    victim: dict[str, Any]
    sweep: SweepSummary
    seconds: dict[str, float] = field(default_factory=dict)


def _utility_kwargs(dep: Deployment, victim: Optional[Path], trust_code: bool) -> dict[str, Any]:
    c = dep.clients
    return {"dataset": dep.data.name, "data_root": dep.data.root, "model": dep.model.name,
            "model_kwargs": dict(dep.model.kwargs) or None, "clients": dep.utility.clients,
            "rounds": dep.utility.rounds, "batch_size": c.samples, "lr": dep.utility.lr or c.local_lr,
            "protocol": c.protocol, "local_steps": c.local_steps, "seed": dep.seed,
            "weights": None if victim is None else str(victim), "local": c.utility_local(),
            "image_size": dep.data.image_size, "trust_code": trust_code}


def check_audit(dep: Deployment, out: str | Path, *, trust_code: bool = False):
    """Every check of :func:`audit_deployment` (no file created); returns (out, data plan, model spec)."""
    out = check_run_dir(out)
    check_risk_options(dep)
    data = split_data(dep)
    spec = model_spec(dep, data.private, trust_code)
    user = check_user_weights(dep, spec)
    # the cells and the utility runs, with a stand-in batch and the user's (or no) weights: the same checks
    stand_in = [data.pool[:dep.clients.samples]]
    plan_cells(audit_sweep(dep, user, stand_in), trust_code=trust_code)
    utility_chains(dep.defenses, **_utility_kwargs(dep, user, trust_code))
    return out, data, spec


def audit_deployment(deployment: str | Path | Deployment | dict, out: str | Path, *, workers: int | None = None,
                     executor: str = "local", ray_address: str | None = None, threads: int | None = None,
                     trust_code: bool = False, progress: bool = True, console=None,
                     log: Optional[Log] = None) -> AuditResult:
    """Audit ``deployment`` (a YAML path, a :class:`Deployment` or its dict) into ``out``; see the module
    docstring. ``workers``: parallel attack cells (default: the deployment's ``workers``; the time budget is
    planned for the deployment's, so the cells keep their keys whatever runs them). ``log``: one line per step."""
    say = log or (lambda _m: None)
    if isinstance(deployment, Deployment):
        dep = deployment
    elif isinstance(deployment, dict):
        dep = parse_deployment(deployment)
    else:
        dep = load_deployment(deployment)
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    out, data, spec = check_audit(dep, out, trust_code=trust_code)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    victim, vinfo = prepare_victim(dep, out, data, spec, trust_code=trust_code,
                                   progress=lambda e, n, loss: say(f"  victim epoch {e}/{n}: loss {loss:.3f}"))
    say({"user": f"victim: the given weights ({victim})", "fresh": "victim: a fresh initialisation"}.get(
        vinfo["source"], f"victim: {'reused' if vinfo.get('reused') else 'trained'} on the public part "
                         f"({len(data.public)} images, training accuracy {vinfo.get('final_accuracy', 0):.1%})"))
    seconds["victim"] = time.perf_counter() - t
    t = time.perf_counter()
    say(f"risk ranking: {dep.audit.rank} private samples by {dep.audit.proxy} and the gradient norm")
    ranking = rank_risk(dep, out, data, spec, victim)
    seconds["ranking"] = time.perf_counter() - t
    batches = audit_batches(dep, data, ranking)
    n_attacks = len(audit_attacks(dep))
    n_cells = n_attacks * len(dep.defenses) * len(batches)  # the sweep's grid: attacks x defenses x batches
    budget = attack_budget(dep, n_cells)
    sweep = audit_sweep(dep, victim, batches, budget)
    say(f"attacks: {n_cells} cells ({len(dep.defenses)} defenses x {len(batches)} audited samples x "
        f"{n_attacks} attacks)" + ("" if budget is None else f", {budget:.0f} s each"))
    t = time.perf_counter()
    summary = run_sweep(sweep, out, executor=executor, workers=workers or dep.workers, ray_address=ray_address,
                        progress=progress, threads=threads, console=console, trust_code=trust_code)
    seconds["attacks"] = time.perf_counter() - t
    say(f"  {summary.done} cells run now, {summary.skipped} already done, {summary.failed} failed")
    t = time.perf_counter()
    say(f"utility: {len(dep.defenses)} defenses x {dep.utility.rounds} rounds of {dep.utility.clients} clients")
    urows = [row for row, _ in run_utility(out, dep.defenses, **_utility_kwargs(dep, victim, trust_code),
                                           on_start=lambda key, label: say(f"  utility of {label}"))]
    seconds["utility"] = time.perf_counter() - t
    with ResultsStore(out) as store:
        keys = {c.key for c in expand(sweep)}  # run_sweep validated them
        cells = [c for c in store.cells("done") if c.key in keys]
        failed = [c for c in store.cells("failed") if c.key in keys]
    roles = {i: ranking.role(i) for i in ranking.audited}
    verdict = build_verdict(dep, ranking.audited, roles, cells, failed, urows)
    (out / "verdict.json").write_text(json.dumps({"lines": verdict.lines(), **asdict(verdict)}, indent=1,
                                                 default=str))
    report = write_deployment_report(out, dep, verdict, ranking, vinfo, seconds)
    return AuditResult(out, verdict, report, ranking, vinfo, summary, seconds)


__all__ = ["AUDIT_PAGE", "AuditResult", "audit_deployment", "check_audit"]
