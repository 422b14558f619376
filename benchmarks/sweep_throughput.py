"""Sweep throughput: cells per minute with the local executor at 1 and 2 workers, and with Ray at 2 workers.

A fixed grid of 12 cells (inverting-gradients, 500 iterations, on 32x32 embedded images with LeNet; defenses
none / prune:0.9 / noise:0.01; batch sizes 1 and 4; 2 samples), each 2-4 s on one core, is run into a fresh folder
per configuration, with one torch thread per worker (``--threads``) so that the comparison is of parallel cells
alone. Reported per configuration: the end-to-end wall time, the executor's start-up (worker processes importing
torch, or Ray starting), the mean time of one cell inside its worker, and cells per minute both end to end and
once started (start-up excluded; what a long sweep sees). Targets: 2 workers >= 1.7x one worker, Ray within 15%
of local.

The machine's load average is printed before and after: on a shared machine other jobs take cores from the
workers, and the ratios move with them. Run:  .venv/bin/python benchmarks/sweep_throughput.py [--iterations N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from gradaudit.evaluation.executors import available_cores
from gradaudit.evaluation.runner import run_sweep
from gradaudit.evaluation.store import ResultsStore


def grid(iterations: int) -> dict:
    return {"base": {"data": {"name": "embedded"}, "model": {"name": "lenet"}, "seed": 0},
            "attacks": [{"preset": "inverting-gradients", "overrides": {"iterations": iterations}}],
            "defenses": [[], ["prune:0.9"], ["noise:0.01"]], "batch_sizes": [1, 4], "samples": 2}


def measure(name: str, sweep: dict, executor: str, workers: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        t0 = time.perf_counter()
        s = run_sweep(sweep, Path(tmp) / "run", executor=executor, workers=workers, threads=threads,
                      progress=False)
        wall = time.perf_counter() - t0
        with ResultsStore(Path(tmp) / "run") as store:
            rows = list(store.cells())
        per_cell = [r.seconds for r in rows]
        cpu_per_cell = [r.metrics["cell_cpu_seconds"] for r in rows]
    assert s.done == s.total and not s.failed, s.failures
    busy = wall - s.startup_s
    return {"name": name, "cells": s.done, "wall": wall, "startup": s.startup_s, "per_cell": statistics.mean(per_cell),
            "cpu_per_cell": statistics.mean(cpu_per_cell),
            "util": sum(per_cell) / (busy * workers), "cpm_e2e": 60 * s.done / wall, "cpm": 60 * s.done / busy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=500, help="attack iterations per cell")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray measurement")
    args = ap.parse_args()
    sweep = grid(args.iterations)
    print(f"{available_cores()} cores, {args.threads} torch thread(s) per worker, {args.iterations} iterations per "
          f"cell; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runs = [measure("local, 1 worker (in-process)", sweep, "local", 1, args.threads),
            measure("local, 2 workers", sweep, "local", 2, args.threads)]
    if not args.no_ray:
        try:
            import ray  # noqa: F401
            runs.append(measure("ray, 2 workers (local instance)", sweep, "ray", 2, args.threads))
        except ImportError:
            print("ray is not installed: skipped")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(f"{'configuration':34s} {'cells':>5s} {'wall s':>7s} {'start s':>7s} {'s/cell':>7s} {'cpu s/cell':>10s} "
          f"{'busy':>5s} {'cells/min':>9s} {'(e2e)':>7s}")
    for r in runs:
        print(f"{r['name']:34s} {r['cells']:5d} {r['wall']:7.1f} {r['startup']:7.1f} {r['per_cell']:7.2f} "
              f"{r['cpu_per_cell']:10.2f} {r['util']:5.0%} {r['cpm']:9.1f} {r['cpm_e2e']:7.1f}")
    print("s/cell: mean wall time of one cell in its worker; cpu s/cell: the CPU time it used. When s/cell grows\n"
          "with the workers while cpu s/cell does not, the workers are waiting for cores that other jobs hold.\n"
          "busy: the share of the run (after start-up) its workers spent inside cells; the rest is the runner's\n"
          "own overhead (scheduling, writing images and rows).")
    one, two = runs[0], runs[1]
    print()
    print(f"2 workers / 1 worker: {two['cpm'] / one['cpm']:.2f}x once started "
          f"({two['cpm_e2e'] / one['cpm_e2e']:.2f}x end to end); target >= 1.7x")
    if len(runs) > 2:
        ray_ = runs[2]
        print(f"ray / local at 2 workers: {ray_['cpm'] / two['cpm']:.2f} once started "
              f"({ray_['cpm_e2e'] / two['cpm_e2e']:.2f} end to end); target >= 0.85")


if __name__ == "__main__":
    main()
