"""Run a sweep into a run folder, resumably: ``run_sweep(sweep, run_dir) -> SweepSummary``.

The run folder holds

    sweep.yaml                 the resolved sweep (every default written out); an earlier, different one is kept
                               as sweep.previous-N.yaml
    results.sqlite             the results store (:class:`~gradaudit.evaluation.store.ResultsStore`), one row per
                               finished or definitively failed cell, keyed by the cell's key
    cells/<key>.safetensors    each finished cell's images: ``truth`` and ``reconstruction`` ([B, C, H, W],
                               float32 in [0, 1], the reconstruction aligned to the truth), ``true_labels`` and
                               ``labels`` (the attack's labels, aligned) when it has them

Crash safety: cells run in workers (:mod:`gradaudit.evaluation.executors`); only this (parent) process writes.
For each result it first writes the image file (to a temporary name, fsync, then an atomic rename), then adds
the row in one transaction. A process killed at any moment, SIGKILL included, therefore leaves complete rows
whose image files exist, and rerunning the same command skips every cell already in the store and runs only the
missing ones. A cell that raises is re-run up to ``retries`` times, then stored as ``failed`` with its error;
it never stops the sweep. A rerun keeps failed rows as results (they are not retried) unless asked to with
``retry_failed=True`` (``--retry-failed``), which deletes this sweep's failed rows first and runs those cells
again. A lock file keeps two runners off the same folder.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from ..checks import check_run_dir
from ..errors import ConfigError
from .executors import CellExecutor, make_executor
from .store import CellRow, ResultsStore
from ..defenses.registry import defense_strength
from .sweep import NO_DEFENSE, Cell, SweepConfig, load_sweep, parse_sweep, plan
from ..checks import finite_or_none

SWEEP_FILE = "sweep.yaml"
CELLS_DIR = "cells"
LOCK_FILE = ".evaluate.lock"


@dataclass
class SweepSummary:
    """What one :func:`run_sweep` call did, and the sweep's results so far (from the store).

    ``done`` / ``failed`` count the cells finished by this call, ``skipped`` those already in the store,
    ``retried`` the failed cells of an earlier call run again (``retry_failed``).
    ``rows``: one per (defense, batch size), in sweep order, with the strongest attack (highest mean PSNR over
    its samples, i.e. the lowest reconstruction error: seed 002's err(D, s) = min over attacks).
    """

    run_dir: Path
    executor: str
    workers: int
    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    seconds: float = 0.0
    startup_s: float = 0.0
    stored_done: int = 0
    stored_failed: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cells_per_minute(self) -> Optional[float]:
        """Cells finished per minute of running them (executor start-up excluded)."""
        busy = self.seconds - self.startup_s
        n = self.done + self.failed
        return 60.0 * n / busy if n and busy > 0 else None

    @property
    def complete(self) -> bool:
        return self.stored_done + self.stored_failed == self.total


# ----------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another 'gradaudit evaluate' is writing to {run_dir}; wait for it or use "
                              "another --out") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock (as does the death of the process)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_sweep_file(run_dir: Path, sweep: SweepConfig) -> None:
    path = run_dir / SWEEP_FILE
    text = sweep.to_yaml()
    if path.is_file():
        old = path.read_text()
        if old == text:
            return
        n = 1
        while (run_dir / f"sweep.previous-{n}.yaml").exists():
            n += 1
        os.replace(path, run_dir / f"sweep.previous-{n}.yaml")
    _atomic_write_text(path, text)


def _clean_stale_temps(cells_dir: Path) -> None:
    """Temporary image files of a killed run (we hold the lock: nobody else is writing them)."""
    if cells_dir.is_dir():
        for p in cells_dir.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()


def images_path(run_dir: Path, key: str) -> Path:
    return Path(run_dir) / CELLS_DIR / f"{key}.safetensors"


def write_cell_images(run_dir: Path, cell: Cell, outcome: dict[str, Any]) -> str:
    """Write a finished cell's images atomically; returns their path relative to the run folder."""
    import numpy as np
    from safetensors.numpy import save_file

    final = images_path(run_dir, cell.key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"truth": np.ascontiguousarray(outcome["truth"], dtype=np.float32),
               "reconstruction": np.ascontiguousarray(outcome["reconstruction"], dtype=np.float32)}
    for name in ("true_labels", "labels"):
        if outcome.get(name) is not None:
            tensors[name] = np.ascontiguousarray(outcome[name], dtype=np.int64)
    metadata = {"key": cell.key, "attack": cell.attack, "defense": cell.defense,
                "batch_size": str(cell.batch_size), "sample": str(cell.sample), "seed": str(cell.seed)}
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return f"{CELLS_DIR}/{final.name}"


def load_cell_images(run_dir: str | Path, key: str) -> dict[str, Any]:
    """The tensors of one finished cell (``truth``, ``reconstruction``, and the labels when present)."""
    from safetensors.torch import load_file

    return load_file(str(images_path(Path(run_dir), key)))


def defense_columns(specs: list[str]) -> tuple[str, Optional[float]]:
    """The store's ``defense_family`` (spec names joined, ``none``) and ``defense_strength`` (declared strength
    of a single defense, None for a chain) of a cell's defenses."""
    if not specs:
        return NO_DEFENSE, None
    names = [s.partition(":")[0].strip() for s in specs]
    return " + ".join(names), (defense_strength(specs[0]) if len(specs) == 1 else None)


def _done_row(cell: Cell, outcome: dict[str, Any], attempts: int, errors: list[str], rel: str,
              executor: str) -> CellRow:
    scores = outcome["scores"]
    metrics = dict(outcome["record"])
    metrics.update({"attempts": attempts, "previous_errors": errors, "executor": executor,
                    "worker_pid": outcome.get("pid"), "cell_seconds": outcome["seconds"],
                    "cell_cpu_seconds": outcome.get("cpu_seconds")})
    family, strength = defense_columns(cell.config.defenses)
    return CellRow(key=cell.key, status="done", attack=cell.attack, defense=cell.defense,
                   batch_size=cell.batch_size, sample=cell.sample, seed=cell.seed, config=cell.config_dict(),
                   defense_family=family, defense_strength=strength, psnr=finite_or_none(scores.get("mean_psnr")), ssim=finite_or_none(scores.get("mean_ssim")),
                   mse=finite_or_none(scores.get("mean_mse")), lpips=finite_or_none(scores.get("mean_lpips")),
                   label_acc=finite_or_none(scores.get("label_accuracy")), seconds=float(outcome["seconds"]),
                   attempts=attempts, images_path=rel, metrics=metrics)


def _failed_row(cell: Cell, outcome: dict[str, Any], attempts: int, errors: list[str], seconds: float,
                executor: str) -> CellRow:
    family, strength = defense_columns(cell.config.defenses)
    return CellRow(key=cell.key, status="failed", attack=cell.attack, defense=cell.defense,
                   batch_size=cell.batch_size, sample=cell.sample, seed=cell.seed, config=cell.config_dict(),
                   defense_family=family, defense_strength=strength, seconds=seconds, attempts=attempts, error=outcome.get("error") or "unknown error",
                   metrics={"errors": errors, "traceback": outcome.get("traceback", ""), "executor": executor})


def summarize_store(store: ResultsStore, cells: list[Cell]) -> tuple[list[dict[str, Any]], int, int]:
    """Per (defense, batch size), in sweep order: the strongest attack's mean scores over its samples."""
    by_key = {c.key: c for c in cells}
    done = [r for r in store.cells("done") if r.key in by_key]
    failed = [r for r in store.cells("failed") if r.key in by_key]
    groups: dict[tuple[str, int], dict[str, list[CellRow]]] = defaultdict(lambda: defaultdict(list))
    for r in done:
        groups[(r.defense, r.batch_size)][r.attack].append(r)
    n_failed: dict[tuple[str, int], int] = defaultdict(int)
    for r in failed:
        n_failed[(r.defense, r.batch_size)] += 1
    order: list[tuple[str, int]] = []
    for c in cells:
        if (c.defense, c.batch_size) not in order:
            order.append((c.defense, c.batch_size))

    def mean(rows, attr):
        vals = [getattr(r, attr) for r in rows if getattr(r, attr) is not None]
        return sum(vals) / len(vals) if vals else None

    rows = []
    for d, b in order:
        total = sum(1 for c in cells if (c.defense, c.batch_size) == (d, b))
        per_attack = {a: rs for a, rs in groups.get((d, b), {}).items()}
        best = None
        for attack, rs in per_attack.items():
            p = mean(rs, "psnr")
            if p is not None and (best is None or p > best[1]):
                best = (attack, p, rs)
        rows.append({"defense": d, "batch_size": b, "attack": best[0] if best else None,
                     "psnr": best[1] if best else None, "ssim": mean(best[2], "ssim") if best else None,
                     "mse": mean(best[2], "mse") if best else None,
                     "label_acc": mean(best[2], "label_acc") if best else None,
                     "samples": len(best[2]) if best else 0,
                     "attacks": {a: mean(rs, "psnr") for a, rs in per_attack.items()},
                     "done": sum(len(rs) for rs in per_attack.values()), "failed": n_failed[(d, b)],
                     "total": total})
    return rows, len(done), len(failed)


class _Bar:
    """The rich progress bar over cells: done/total, best attack PSNR so far, failures, elapsed, ETA."""

    def __init__(self, enabled: bool, console, total: int, skipped: int, executor: str) -> None:
        self.progress = None
        self.best: Optional[tuple[float, str]] = None
        self.failed = 0
        if not enabled or total == 0:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                 TextColumn("{task.fields[best]}"), TextColumn("{task.fields[failed]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=console or Console(stderr=True), transient=False)
        self.progress.console.print(f"{total} cells to run" + (f" ({skipped} already done)" if skipped else "")
                                    + f" on {executor}")
        self.task = self.progress.add_task("cells", total=total, best="best -", failed="failed 0")
        self.progress.start()

    def update(self, cell: Cell, psnr: Optional[float], failed: bool) -> None:
        if failed:
            self.failed += 1
        elif psnr is not None and (self.best is None or psnr > self.best[0]):
            self.best = (psnr, f"{cell.attack}, {cell.defense}, B={cell.batch_size}")
        if self.progress is not None:
            best = f"best {self.best[0]:.1f} dB ({self.best[1]})" if self.best else "best -"
            fails = f"[red]failed {self.failed}[/red]" if self.failed else "failed 0"
            self.progress.update(self.task, advance=1, best=best, failed=fails)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


# ------------------------------------------------------------------------------------------------- main
def run_sweep(sweep: SweepConfig | dict[str, Any] | str | Path, run_dir: str | Path,
              executor: str | CellExecutor = "local", workers: int = 2, ray_address: Optional[str] = None,
              progress: bool = True, *,
              threads: Optional[int] = None, console=None, retry_failed: bool = False,
              trust_code: bool = False) -> SweepSummary:
    """Run every cell of ``sweep`` not yet in ``run_dir``'s results store; see the module docstring.

    ``sweep``: a SweepConfig, its dict, or a YAML path. ``executor``: ``"local"`` (worker processes; workers=1
    runs in this process), ``"ray"`` (``ray_address`` joins a running cluster, otherwise a local instance with
    ``workers`` CPUs is started and shut down), or a :class:`CellExecutor`. ``threads``: torch threads per
    worker (default cores // workers). ``retry_failed``: run again the cells stored as failed by an earlier
    call (after fixing what made them fail). ``trust_code``: the sweep may name models or generators as
    ``package.module:factory`` and the caller trusts that code (:mod:`gradaudit.trust`; a sweep file cannot
    say so itself). Every cell is validated before any work starts or any file is created (ConfigError).
    """
    t0 = time.perf_counter()
    sweep = load_sweep(sweep) if isinstance(sweep, (str, Path)) else parse_sweep(sweep)
    cells = plan(sweep, trust_code=trust_code)
    if not cells:  # pragma: no cover - parse_sweep refuses an empty grid
        raise ConfigError("the sweep has no cells")
    run_dir = check_run_dir(run_dir)
    if isinstance(executor, CellExecutor):
        ex = executor
    else:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        ex = make_executor(executor, workers, ray_address, threads)
    ex.trust_code = bool(trust_code)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = SweepSummary(run_dir=run_dir, executor=ex.name, workers=ex.workers, total=len(cells))
    by_key = {c.key: c for c in cells}
    with _run_lock(run_dir), contextlib.closing(ResultsStore(run_dir)) as store:
        _write_sweep_file(run_dir, sweep)
        _clean_stale_temps(run_dir / CELLS_DIR)
        if retry_failed:
            summary.retried = store.forget_failed(set(by_key))
        finished = store.finished_keys()
        todo = [c for c in cells if c.key not in finished]
        summary.skipped = len(cells) - len(todo)
        if todo:
            _execute(sweep, todo, by_key, ex, store, run_dir, summary, progress, console)
        summary.rows, summary.stored_done, summary.stored_failed = summarize_store(store, cells)
    summary.seconds = time.perf_counter() - t0
    return summary


def _execute(sweep: SweepConfig, todo: list[Cell], by_key: dict[str, Cell], ex: CellExecutor,
             store: ResultsStore, run_dir: Path, summary: SweepSummary, progress: bool, console) -> None:
    attempts: dict[str, int] = defaultdict(int)
    errors: dict[str, list[str]] = defaultdict(list)
    spent: dict[str, float] = defaultdict(float)
    bar = None
    interrupted = True
    try:
        summary.startup_s = ex.start()
        label = ex.describe()
        bar = _Bar(progress, console, len(todo), summary.skipped, label)
        for cell in todo:
            ex.submit(cell.key, cell.config_dict(), sweep.timeout_s)
        while ex.pending:
            for key, outcome in ex.wait():
                cell = by_key[key]
                attempts[key] += 1
                spent[key] += float(outcome.get("seconds") or 0.0)
                if outcome.get("ok"):
                    rel = write_cell_images(run_dir, cell, outcome)  # the file first, then the row
                    row = _done_row(cell, outcome, attempts[key], errors[key], rel, label)
                    store.add_cell(row)
                    summary.done += 1
                    bar.update(cell, row.psnr, failed=False)
                    continue
                errors[key].append(outcome.get("error") or "unknown error")
                if attempts[key] <= sweep.retries:
                    ex.submit(key, cell.config_dict(), sweep.timeout_s)
                    continue
                store.add_cell(_failed_row(cell, outcome, attempts[key], errors[key], spent[key], label))
                summary.failed += 1
                summary.failures.append({"key": key, "cell": cell.label, "error": errors[key][-1],
                                         "attempts": attempts[key]})
                bar.update(cell, None, failed=True)
        interrupted = False
    finally:
        if bar is not None:
            bar.stop()
        ex.close(cancel=interrupted)


__all__ = ["SweepSummary", "load_cell_images", "run_sweep", "summarize_store", "write_cell_images"]
