"""Executors: worker processes and Ray give the same results as one in-process worker; crashed workers.

Results are deterministic for a given thread count (seeds fix the private batch, the model, the attack's start
and the defenses' noise), so every executor runs with one torch thread per worker and must reproduce the
in-process metrics and images exactly.
"""

from __future__ import annotations

import pickle
import textwrap

import numpy as np
import pytest

from gradaudit.evaluation.executors import LocalExecutor, execute_cell, make_executor
from gradaudit.evaluation.runner import load_cell_images, run_sweep
from gradaudit.evaluation.store import ResultsStore
from gradaudit.evaluation.sweep import expand
from gradaudit.errors import ConfigError

SPEC = {"base": {"data": {"name": "embedded", "image_size": 16}, "model": {"name": "lenet"}, "seed": 3},
        "attacks": [{"preset": "inverting-gradients", "overrides": {"iterations": 4}}],
        "defenses": [["noise:0.01"], ["prune:0.9"]], "batch_sizes": [1, 2]}


def _results(run_dir) -> dict[str, tuple]:
    with ResultsStore(run_dir) as store:
        rows = list(store.cells(status=None))
    assert all(r.status == "done" for r in rows), [r.error for r in rows]
    return {r.key: (r.psnr, r.ssim, r.mse, r.label_acc, load_cell_images(run_dir, r.key)["reconstruction"].numpy())
            for r in rows}


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b) == {c.key for c in expand(SPEC)}
    for key in a:
        assert a[key][:4] == pytest.approx(b[key][:4], rel=1e-6, abs=1e-9)
        np.testing.assert_allclose(a[key][4], b[key][4], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one-worker")
    summary = run_sweep(SPEC, run_dir, workers=1, threads=1, progress=False)
    assert summary.done == 4
    return _results(run_dir)


def test_execute_cell_returns_a_plain_picklable_dict():
    cell = expand(SPEC)[0]
    out = execute_cell(cell.config_dict(), None, 1)
    assert out["ok"] and set(out) >= {"scores", "record", "reconstruction", "truth", "labels", "true_labels",
                                      "seconds", "pid"}
    assert isinstance(out["reconstruction"], np.ndarray) and out["reconstruction"].shape == (1, 3, 16, 16)
    assert out["record"]["scores"] == out["scores"]
    pickle.loads(pickle.dumps(out))
    bad = execute_cell({**cell.config_dict(), "model": {"name": "nope"}}, None, 1)
    assert not bad["ok"] and bad["error"].startswith("ConfigError: unknown model 'nope'") and bad["traceback"]


def test_two_worker_processes_match_one_in_process_worker(tmp_path, reference):
    summary = run_sweep(SPEC, tmp_path / "run", workers=2, threads=1, progress=False)
    assert (summary.executor, summary.workers, summary.done, summary.failed) == ("local", 2, 4, 0)
    results = _results(tmp_path / "run")
    _assert_same(results, reference)
    with ResultsStore(tmp_path / "run") as store:
        pids = {r.metrics["worker_pid"] for r in store.cells()}
    assert len(pids) == 2  # the cells really ran in two different processes


CRASHY = """
import os
from torch import nn


class Crashy(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        c, h, w = input_shape
        self.fc = nn.Linear(c * h * w, num_classes)

    def forward(self, x):
        if x.shape[0] == 2:
            os._exit(3)  # the worker process dies, as if it were killed
        return self.fc(x.flatten(1))


def make(num_classes, input_shape):
    return Crashy(num_classes, input_shape)
"""


def test_a_dying_worker_fails_only_its_own_cell(tmp_path, monkeypatch):
    (tmp_path / "gradaudit_test_crashy.py").write_text(textwrap.dedent(CRASHY))
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    spec = {**SPEC, "base": {**SPEC["base"], "model": {"name": "gradaudit_test_crashy:make"}},
            "defenses": [[]], "batch_sizes": [1, 2], "samples": 2, "retries": 1}
    summary = run_sweep(spec, tmp_path / "run", workers=2, threads=1, progress=False, trust_code=True)
    assert (summary.done, summary.failed) == (2, 2)
    with ResultsStore(tmp_path / "run") as store:
        rows = list(store.cells(status=None))
    for r in rows:
        if r.batch_size == 2:
            assert r.status == "failed" and r.attempts == 2 and "worker process" in r.error
        else:  # lost with the pool at least once, but never charged for it
            assert r.status == "done" and r.attempts == 1


def test_executor_choice_is_validated():
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ConfigError, match="--ray-address needs --executor ray"):
        make_executor("local", ray_address="127.0.0.1:6379")
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        LocalExecutor(0)


def test_ray_executor_matches_local(tmp_path, reference):
    try:
        import ray  # noqa: F401
    except ImportError as e:
        pytest.skip(f"ray is not installed ({e}); pip install 'ray>=2.9' to run this test")
    import ray

    spec = {**SPEC, "defenses": SPEC["defenses"][:1]}  # 2 cells
    summary = run_sweep(spec, tmp_path / "run", executor="ray", workers=2, threads=1, progress=False)
    assert not ray.is_initialized()  # we started it, so we shut it down
    assert (summary.executor, summary.done, summary.failed) == ("ray", 2, 0)
    results = _results(tmp_path / "run")
    keys = {c.key for c in expand(spec)}
    assert set(results) == keys
    _assert_same_subset(results, reference)


def _assert_same_subset(results: dict, reference: dict) -> None:
    for key, value in results.items():
        assert value[:4] == pytest.approx(reference[key][:4], rel=1e-6, abs=1e-9)
        np.testing.assert_allclose(value[4], reference[key][4], rtol=0, atol=1e-6)
