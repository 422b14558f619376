"""The sweep runner: resume after SIGKILL, failing and timed-out cells, the run folder, the CLI command.

Cells attack 16x16 embedded images with LeNet (or a tiny user model) for a few iterations.
"""

from __future__ import annotations

import contextlib

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from gradaudit.cli import main
from gradaudit.errors import ConfigError
from gradaudit.evaluation.runner import SWEEP_FILE, load_cell_images, run_sweep
from gradaudit.evaluation.store import ResultsStore
from gradaudit.evaluation.sweep import expand

pytestmark = pytest.mark.usefixtures("single_thread")

ONE_THREAD = ["--workers", "1", "--threads", "1", "--no-progress"]
BASE = {"data": {"name": "embedded", "image_size": 16}, "model": {"name": "lenet"}, "seed": 0}


def _rows(run_dir) -> list[dict]:
    conn = sqlite3.connect(run_dir / "results.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM cells ORDER BY rowid")]
    finally:
        conn.close()


def _count(run_dir) -> int:
    try:
        conn = sqlite3.connect(run_dir / "results.sqlite", timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet
        return 0


def _check_complete_rows(run_dir) -> list[dict]:
    rows = _rows(run_dir)
    for r in rows:
        assert r["status"] in ("done", "failed")
        assert r["config_json"] and r["finished_at"]
        if r["status"] == "done":
            assert r["psnr"] is not None and r["metrics_json"]
            tensors = load_file(str(run_dir / r["images_path"]))
            assert tensors["truth"].shape == tensors["reconstruction"].shape == (r["batch_size"], 3, 16, 16)
    # every done row has its image file and there is no other (temporaries of a killed run excepted)
    expected = [r["key"] for r in rows if r["status"] == "done"]
    cells = run_dir / "cells"
    found = sorted(p.name for p in cells.iterdir() if not p.name.startswith(".")) if cells.is_dir() else []
    assert found == sorted(f"{k}.safetensors" for k in expected)
    assert (run_dir / SWEEP_FILE).is_file()
    return rows


# --------------------------------------------------------------------------------------- resume after SIGKILL
def test_resume_after_sigkill(tmp_path):
    spec = {"base": BASE, "attacks": [{"preset": "inverting-gradients", "overrides": {"iterations": 150}}],
            "defenses": [[], ["prune:0.9"]], "batch_sizes": [1, 2], "samples": 2}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "run"
    expected = {c.key for c in expand(spec)}
    assert len(expected) == 8
    cmd = [sys.executable, "-m", "gradaudit.cli", "evaluate", str(path), "--out", str(run_dir), "--workers", "1",
           "--threads", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while _count(run_dir) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the sweep wrote no rows within 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with ResultsStore(run_dir) as store:  # the store opens after the kill
        first = store.count()
    assert 2 <= first < 8, "killed too late to test a resume"
    before = {r["key"]: r for r in _check_complete_rows(run_dir)}

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped" in done.stdout and "Sweep complete: 8 done, 0 failed of 8 cells" in done.stdout

    rows = _check_complete_rows(run_dir)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 8 and set(keys) == expected
    after = {r["key"]: r for r in rows}
    for key, row in before.items():
        assert after[key] == row  # untouched: same finished_at, same scores


def test_workers_exit_when_the_runner_is_killed(tmp_path):
    """SIGKILL on `gradaudit evaluate` leaves no worker burning the cores on cells nobody will store."""
    spec = {"base": BASE, "attacks": [{"preset": "inverting-gradients", "overrides": {"iterations": 100000}}],
            "defenses": [[]], "batch_sizes": [1], "samples": 2}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "gradaudit.cli", "evaluate", str(path), "--out", str(tmp_path / "run"),
           "--workers", "2", "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})

    def workers() -> set[int]:
        out = subprocess.run(["pgrep", "-f", "multiprocessing.forkserver"], capture_output=True, text=True).stdout
        pids = set()
        for pid in map(int, out.split()):
            try:
                env = open(f"/proc/{pid}/environ", "rb").read()
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if cwd == os.getcwd() and pid not in before and b"OMP_NUM_THREADS=1" in env:
                pids.add(pid)
        return pids

    before = set(map(int, subprocess.run(["pgrep", "-f", "multiprocessing.forkserver"], capture_output=True,
                                         text=True).stdout.split()))
    try:
        deadline = time.monotonic() + 60
        while len(workers()) < 3:  # the fork server and its two workers
            assert proc.poll() is None and time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        time.sleep(1.0)  # the cells are running now
        started = workers()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while started & _alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = started & _alive(started)
        assert not left, f"processes still running after the runner was killed: {sorted(left)}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in workers():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


# ------------------------------------------------------------------------------------- failing cells, timeout
PICKY = """
import torch
from torch import nn


class Picky(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        c, h, w = input_shape
        self.fc = nn.Linear(c * h * w, num_classes)

    def forward(self, x):
        if x.shape[0] == 2:
            raise RuntimeError("picky model refuses batches of 2")
        return self.fc(x.flatten(1))


def make(num_classes, input_shape):
    return Picky(num_classes, input_shape)
"""


@pytest.fixture
def picky_model(tmp_path, monkeypatch):
    (tmp_path / "gradaudit_test_picky.py").write_text(textwrap.dedent(PICKY))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "gradaudit_test_picky:make"


def test_a_failing_cell_is_recorded_after_its_retries_and_the_rest_finish(tmp_path, picky_model):
    spec = {"base": {**BASE, "model": {"name": picky_model}},
            "attacks": [{"preset": "inverting-gradients", "overrides": {"iterations": 3}}],
            "defenses": [[], ["noise:0.01"]], "batch_sizes": [1, 2], "retries": 2}
    with pytest.raises(ConfigError, match="--trust-model-code"):  # a sweep file cannot make its own code run
        run_sweep(spec, tmp_path / "run", workers=1, threads=1, progress=False)
    assert not (tmp_path / "run").exists()
    summary = run_sweep(spec, tmp_path / "run", workers=1, threads=1, progress=False, trust_code=True)
    assert (summary.total, summary.done, summary.failed, summary.skipped) == (4, 2, 2, 0)
    rows = _check_complete_rows(tmp_path / "run")
    failed = [r for r in rows if r["status"] == "failed"]
    assert sorted(r["batch_size"] for r in failed) == [2, 2]
    for r in failed:
        assert r["attempts"] == 3  # the first try and two retries
        assert "RuntimeError: picky model refuses batches of 2" in r["error"]
        assert r["images_path"] is None and r["psnr"] is None
    assert all(r["attempts"] == 1 for r in rows if r["status"] == "done")
    assert {f["error"] for f in summary.failures} == {"RuntimeError: picky model refuses batches of 2"}
    # a rerun keeps the failed rows as they are (they are results) and runs nothing
    again = run_sweep(spec, tmp_path / "run", workers=1, threads=1, progress=False, trust_code=True)
    assert (again.done, again.failed, again.skipped, again.stored_failed) == (0, 0, 4, 2)


def test_retry_failed_reruns_only_the_failed_cells_and_keeps_the_done_rows(tmp_path, picky_model):
    spec = {"base": {**BASE, "model": {"name": picky_model}},
            "attacks": [{"preset": "inverting-gradients", "overrides": {"iterations": 3}}],
            "defenses": [[]], "batch_sizes": [1, 2], "retries": 0}
    first = run_sweep(spec, tmp_path / "run", workers=1, threads=1, progress=False, trust_code=True)
    assert (first.done, first.failed) == (1, 1)
    done_before = {r["key"]: r["finished_at"] for r in _rows(tmp_path / "run") if r["status"] == "done"}
    again = run_sweep(spec, tmp_path / "run", workers=1, threads=1, progress=False, retry_failed=True,
                      trust_code=True)
    # only the failed cell ran again (and failed again: the model still refuses B=2); the done row is untouched
    assert (again.retried, again.done, again.failed, again.skipped) == (1, 0, 1, 1)
    rows = _check_complete_rows(tmp_path / "run")
    assert len(rows) == 2
    assert {r["key"]: r["finished_at"] for r in rows if r["status"] == "done"} == done_before


def test_a_cell_past_its_timeout_fails_and_does_not_hold_up_the_sweep(tmp_path):
    spec = {"base": BASE, "attacks": [{"preset": "inverting-gradients", "overrides": {"iterations": 100000}},
                                      {"preset": "inverting-gradients", "name": "quick",
                                       "overrides": {"iterations": 2}}],
            "retries": 0, "timeout_s": 0.5}
    t0 = time.perf_counter()
    summary = run_sweep(spec, tmp_path / "run", workers=1, threads=1, progress=False)
    assert time.perf_counter() - t0 < 20
    assert (summary.done, summary.failed) == (1, 1)
    (failed,) = [r for r in _rows(tmp_path / "run") if r["status"] == "failed"]
    assert failed["attack"] == "inverting-gradients" and "CellTimeout" in failed["error"]
    assert "timeout of 0.5 s" in failed["error"]


# ------------------------------------------------------------------------------------ run folder and CLI output
def test_run_folder_contents_and_cli_summary(tmp_path, capsys):
    spec = {"base": BASE, "attacks": [{"preset": "inverting-gradients", "name": "ig",
                                       "overrides": {"iterations": 3}},
                                      {"preset": "inverting-gradients", "name": "ig-5",
                                       "overrides": {"iterations": 5}}],
            "defenses": [[], ["prune:0.5"]], "batch_sizes": [2]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "run"
    assert main(["evaluate", str(path), "--out", str(run_dir), *ONE_THREAD]) == 0
    out = capsys.readouterr().out
    assert "Strongest attack per defense" in out and "prune:0.5" in out
    assert "Sweep complete: 4 done, 0 failed of 4 cells" in out

    assert yaml.safe_load((run_dir / SWEEP_FILE).read_text())["defenses"] == [[], ["prune:0.5"]]
    with ResultsStore(run_dir) as store:
        rows = list(store.cells())
    assert len(rows) == 4
    by_group: dict = {}
    for r in rows:
        assert r.status == "done" and r.attempts == 1 and r.seconds > 0
        m = r.metrics
        assert m["scores"]["mean_psnr"] == pytest.approx(r.psnr)
        assert m["reconstruction"]["iterations"] == (3 if r.attack == "ig" else 5)
        assert m["config"] == r.config and r.config["defenses"] == ([] if r.defense == "none" else ["prune:0.5"])
        images = load_cell_images(run_dir, r.key)
        assert images["reconstruction"].dtype == torch.float32
        assert 0 <= float(images["reconstruction"].min()) and float(images["reconstruction"].max()) <= 1
        assert images["true_labels"].tolist() == m["true_labels"]
        by_group.setdefault(r.defense, []).append(r)
    # the summary's strongest attack is the one with the highest mean PSNR
    assert main(["evaluate", str(path), "--out", str(run_dir), *ONE_THREAD]) == 0
    out = capsys.readouterr().out
    for defense, rs in by_group.items():
        best = max(rs, key=lambda r: r.psnr)
        line = next(l for l in out.splitlines() if l.startswith(f"│ {defense} "))
        assert best.attack in line and f"{best.psnr:.2f}" in line
    assert "│     4 │    0 │      0 │       4 │" in out  # cells, done, failed, skipped
