"""``gradaudit attack`` and ``gradaudit demo`` as API functions: attack, score, and write the run folder.

:func:`audit_runs` attacks private batches a :class:`~gradaudit.config.RunConfig` describes (the client is
simulated, so the reconstruction is scored); :func:`attack_captured` attacks an observation captured elsewhere
(no ground truth: nothing is scored). Both check every input, the output folder included, before the first
attack iteration, so a bad ``out`` never costs an attack.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..attacks.base import ProgressFn, Reconstruction
from ..attacks.registry import build_attack
from ..checks import check_input_file, check_output_dir, check_output_files
from ..config import RunConfig, load_config
from ..evaluation.cell import AuditResult, prepare, resolve_device, run_attack
from ..evaluation.fit import UpdateFit, update_fit
from ..models.registry import build_model
from ..evaluation.records import summarize
from ..report.run_files import write_captured, write_results
from ..threat.observation import Observation

#: the files every attack run writes into its folder (plus the observation pair(s))
RUN_FILES = ("grid.png", "metrics.json", "config.yaml", "reconstructions.safetensors")
#: called with a run's label when it starts; returns that run's per-iteration progress callback (or None)
RunStart = Callable[[str], Optional[ProgressFn]]


def check_run_output(out: str | Path, observations: bool = True) -> Path:
    """``out`` can take a run folder: a writable (or creatable) folder whose run files can be overwritten."""
    out = check_output_dir(out)
    names = list(RUN_FILES) + (["observation.safetensors", "observation.json"] if observations else [])
    check_output_files(out, names)
    if observations:
        check_output_dir(out / "observations", "--out (its observations/ folder)")
    return out


def audit_runs(configs: Sequence[RunConfig], out: str | Path, *, labels: Sequence[str] | None = None,
               on_start: RunStart | None = None, save_observations: bool = True, trust_code: bool = False,
               extra: dict[str, Any] | None = None) -> tuple[list[AuditResult], dict[str, Path]]:
    """Attack the private batch of every config, score it, and write the run folder ``out``.

    Every config is prepared (validated and its data loaded) and ``out`` checked before the first attack.
    ``labels`` group runs into rows of the grid (default: the defenses). ``trust_code``: the configs may name
    ``package.module:factory`` code the caller trusts (:mod:`gradaudit.trust`). Returns the results and the
    paths written (``grid``, ``metrics``, ``config``, ``reconstructions``, ``observation(s)``)."""
    out = check_run_output(out, save_observations)
    prepared = [prepare(c, trust_code=trust_code) for c in configs]
    labels = list(labels) if labels is not None else [", ".join(c.defenses) or "no defense" for c in configs]
    results = []
    for label, run in zip(labels, prepared):
        progress = on_start(f"{run.config.attack.preset} / {label}") if on_start else None
        results.append(run_attack(run.config, progress, prepared=run))
    paths = write_results(out, results, labels=labels, save_observations=save_observations, extra=extra)
    return results, paths


def attack_captured(observation: str | Path, config: RunConfig, out: str | Path, *,
                    on_start: RunStart | None = None, trust_code: bool = False,
                    allow_legacy: bool = False
                    ) -> tuple[Reconstruction, Observation, dict[str, Path], Optional[UpdateFit]]:
    """Attack an observation captured elsewhere (``NAME.json`` / ``NAME.safetensors`` / the stem) with the attack
    of ``config`` and write the unscored run folder ``out``. Also returns how well the reconstruction explains the
    update (:func:`~gradaudit.evaluation.fit.update_fit` against a perfect fit: no private batch here).

    The observation is verified (checksum over tensors and metadata; ``allow_legacy`` reads an older file and
    :attr:`Observation.legacy` says what was not verified), its model built and its tensors checked against
    it, and ``out`` checked, all before the attack. A model named as code is built only with ``trust_code``."""
    out = check_run_output(out, observations=False)
    check_input_file(Path(observation) if Path(observation).suffix else Path(observation).with_suffix(".json"),
                     "observation")
    obs = Observation.load(observation, trust_code=trust_code, allow_legacy=allow_legacy)
    obs.check_model(build_model(obs.model))
    device = resolve_device(config.device)
    attack = build_attack(config.attack.preset, device=device, seed=config.seed, trust_code=trust_code,
                          allow_legacy=allow_legacy, **config.attack.overrides())
    progress = on_start(f"{config.attack.preset} / {Path(observation).name}") if on_start else None
    rec = attack.reconstruct(obs, progress=progress)
    fit = update_fit(obs, rec.images, rec.labels, device=device)
    paths = write_captured(out, observation, rec, config, legacy=obs.legacy, fit=fit)
    return rec, obs, paths, fit


def attack_threats() -> list[dict[str, Any]]:
    """Which attack applies to which threat model (``gradaudit list --threats``): per attack, the server it
    needs (honest: any model; malicious: the server-sent models named), whether it uses the labels, the prior
    it brings, the largest batch it reconstructs, whether it attacks a secure aggregate, and a note."""
    from ..attacks.registry import attack_names, attack_threat

    rows = []
    for name in attack_names():
        t = attack_threat(name)
        rows.append({"attack": name, "server": t.server, "server sends": ", ".join(t.models) or "any model",
                     "labels": "uses (or recovers)" if t.labels == "uses" else "not needed",
                     "prior": t.prior, "batch": "any" if t.max_batch is None else f"<= {t.max_batch}",
                     "secure aggregate": "yes" if t.aggregate else "no", "note": t.note})
    return sorted(rows, key=lambda r: (r["server"] != "honest", r["attack"]))


# ------------------------------------------------------------------------------------------------- demo
#: one crop each of four different embedded photos
DEMO_IMAGES = (3, 20, 45, 60)
DEMO_CONDITIONS = (("no defense", []), ("noise:0.01", ["defenses=[noise:0.01]"]))
DEMO_TITLE = "DLG on LeNet, 4 embedded images one at a time, labels recovered (iDLG)"


@dataclass
class DemoResult:
    results: list[AuditResult]
    labels: list[str]
    paths: dict[str, Path]
    rows: list[dict[str, Any]]
    seconds: float
    title: str = DEMO_TITLE


def demo_configs(iterations: int | None = None) -> tuple[list[RunConfig], list[str]]:
    """The demo's runs: DLG (100 iterations) on LeNet against four embedded photos, one at a time, with labels
    recovered by iDLG, without a defense and with Gaussian noise sigma = 0.01."""
    base = ["data.name=embedded", "threat.batch_size=1", "model.name=lenet", "attack.preset=dlg",
            "attack.iterations=100", "threat.labels_known=false"]
    if iterations is not None:
        base.append(f"attack.iterations={iterations}")
    configs, labels = [], []
    for label, extra in DEMO_CONDITIONS:
        for i in DEMO_IMAGES:
            configs.append(load_config(overrides=base + [f"data.indices=[{i}]"] + extra))
            labels.append(label)
    return configs, labels


def run_demo(out: str | Path, iterations: int | None = None, on_start: RunStart | None = None) -> DemoResult:
    """Run the demo into ``out`` (grid.png, metrics.json, config.yaml, reconstructions, observations)."""
    t0 = time.perf_counter()
    configs, labels = demo_configs(iterations)
    out = check_run_output(out)
    results, paths = audit_runs(configs, out, labels=labels, on_start=on_start)
    seconds = time.perf_counter() - t0
    _record_total(paths["metrics"], seconds)
    rows = [summarize(label, [r for l, r in zip(labels, results) if l == label]) for label, _ in DEMO_CONDITIONS]
    return DemoResult(results, labels, paths, rows, seconds)


def _record_total(metrics: Path, seconds: float) -> None:
    record = json.loads(metrics.read_text())
    record["total_seconds"] = seconds
    metrics.write_text(json.dumps(record, indent=2))
