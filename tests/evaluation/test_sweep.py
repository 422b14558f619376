"""Sweep files: expansion into cells, stable keys, and every kind of bad input refused before any work."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys

import pytest
import yaml

from gradaudit.cli import main
from gradaudit.errors import ConfigError
from gradaudit.evaluation import executors, runner
from gradaudit.evaluation.sweep import (NO_DEFENSE, SweepConfig, canonical_json, cell_key, expand, load_sweep,
                                        parse_sweep, plan)

SWEEP = {
    "base": {"data": {"name": "embedded", "image_size": 16}, "model": {"name": "lenet"}, "seed": 7},
    "attacks": [
        {"preset": "inverting-gradients", "overrides": {"iterations": 3}},
        {"preset": "dlg", "name": "dlg-short", "overrides": {"iterations": 2, "threat.labels_known": True}},
    ],
    "defenses": [[], ["prune:0.90"], ["clip:4", "noise:1e-2"]],
    "batch_sizes": [1, 2],
    "samples": 2,
}


def sweep(**changes):
    data = copy.deepcopy(SWEEP)
    data.update(changes)
    return data


def test_cell_count_is_the_product_and_labels_are_canonical():
    cells = expand(SWEEP)
    assert len(cells) == 2 * 3 * 2 * 2
    assert {c.attack for c in cells} == {"inverting-gradients", "dlg-short"}
    assert {c.defense for c in cells} == {NO_DEFENSE, "prune:0.9", "clip:4 + noise:0.01"}
    assert {c.batch_size for c in cells} == {1, 2}
    assert {(c.sample, c.seed) for c in cells} == {(0, 7), (1, 8)}  # sample s uses base.seed + s
    for c in cells:
        cfg = c.config
        assert cfg.threat.batch_size == c.batch_size and cfg.seed == c.seed
        assert cfg.defenses == ([] if c.defense == NO_DEFENSE else c.defense.split(" + "))
    dlg = [c for c in cells if c.attack == "dlg-short"]
    assert all(c.config.attack.preset == "dlg" and c.config.attack.iterations == 2 for c in dlg)
    assert all(c.config.threat.labels_known for c in dlg)
    assert not any(c.config.threat.labels_known for c in cells if c.attack != "dlg-short")


def test_keys_are_distinct_and_the_hash_of_the_resolved_config():
    cells = expand(SWEEP)
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys)
    for c in cells[:3]:
        assert c.key == hashlib.sha256(canonical_json(c.config).encode()).hexdigest() == cell_key(c.config)
        assert json.loads(canonical_json(c.config)) == c.config.model_dump(mode="json", exclude_none=True)


def test_keys_are_stable_across_runs_and_spellings(tmp_path):
    keys = [c.key for c in expand(SWEEP)]
    # a fresh interpreter (different hash seed) computes the same keys
    code = ("import json, sys; from gradaudit.evaluation.sweep import expand; "
            "print(json.dumps([c.key for c in expand(json.loads(sys.argv[1]))]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(SWEEP)], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout) == keys
    # equivalent spellings of the same defense, and the resolved sweep written back, give the same cells
    respelled = sweep(defenses=["none", "prune:0.9", ["clip:4.0", "noise:0.01"]])
    assert [c.key for c in expand(respelled)] == keys
    resolved = parse_sweep(SWEEP).to_yaml()
    (tmp_path / "sweep.yaml").write_text(resolved)
    assert [c.key for c in expand(load_sweep(tmp_path / "sweep.yaml"))] == keys
    # a real change changes the key
    other = sweep(base={**SWEEP["base"], "seed": 8})
    assert [c.key for c in expand(other)] != keys


def test_defaults_and_explicit_seeds():
    s = parse_sweep({"base": {"threat": {"batch_size": 3}, "attack": {"preset": "dlg", "iterations": 5}}})
    cells = expand(s)
    assert len(cells) == 1
    assert cells[0].batch_size == 3 and cells[0].defense == NO_DEFENSE and cells[0].attack == "dlg"
    assert cells[0].config.attack.iterations == 5  # base.attack settings are every attack's defaults
    assert s.retries == 1 and s.timeout_s is None and s.samples == 1
    cells = expand(sweep(samples=None, seeds=[3, 11, 5]))
    assert sorted({(c.sample, c.seed) for c in cells}) == [(0, 3), (1, 11), (2, 5)]


@pytest.mark.parametrize("changes, message", [
    ({"defenses": [[], ["prun:0.9"]]}, "defenses[1]: unknown defense 'prun' (did you mean 'prune'?)"),
    ({"defenses": [["noise"]]}, "needs a strength"),
    ({"defenses": [["prune:0.9"], "prune:0.90"]}, "repeats defenses[0]"),
    ({"atacks": []}, "unknown sweep key 'atacks' (did you mean 'attacks'?)"),
    ({"attacks": [{"preset": "dlg", "overides": {}}]}, "unknown sweep key 'attacks[0].overides' (did you mean "
                                                       "'overrides'?)"),
    ({"attacks": [{"preset": "dlg", "overrides": {"iteratons": 2}}]}, "did you mean 'attack.iterations'?"),
    ({"attacks": [{"preset": "dlgg"}]}, "unknown attack 'dlgg' (did you mean 'dlg'?)"),
    ({"attacks": [{"preset": "dlg"}, {"preset": "dlg"}]}, "give each a distinct 'name'"),
    ({"attacks": [{"preset": "dlg", "overrides": {"seed": 3}}]}, "'seed' is an axis of the sweep"),
    ({"base": {"modl": {"name": "lenet"}}}, "base: unknown config key 'modl' (did you mean 'model'?)"),
    ({"base": {"defenses": ["noise:0.1"]}}, "base.defenses"),
    ({"batch_sizes": [1, 0]}, "batch sizes must be >= 1"),
    ({"samples": 0}, "samples"),
    ({"samples": 2, "seeds": [1, 2, 3]}, "samples is 2 but seeds lists 3 seeds"),
    ({"retries": -1}, "retries"),
    ({"timeout_s": 0}, "timeout_s"),
])
def test_bad_sweeps_are_refused_with_a_clear_message(changes, message):
    with pytest.raises(ConfigError) as e:
        plan(sweep(**changes))
    assert message in str(e.value)


@pytest.mark.parametrize("changes, message", [
    ({"batch_sizes": [1, 65]}, "batch size 65 is larger than the dataset (64 samples)"),
    ({"base": {"model": {"name": "convnet"}, "data": {"image_size": 16}}, "defenses": [["dpsgd:1,1.1"]]},
     "BatchNorm"),
    ({"base": {"model": {"name": "lenet", "kwargs": {"widht": 3}}}}, "rejected its arguments"),
    ({"base": {"device": "cuda:7"}} if not __import__("torch").cuda.is_available() else {"base": {"device": "x"}},
     "device"),
])
def test_cells_are_validated_before_any_work(changes, message, tmp_path, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("no cell may run before the whole sweep is validated")

    monkeypatch.setattr(executors, "execute_cell", forbidden)
    with pytest.raises(ConfigError) as e:
        runner.run_sweep(sweep(**changes), tmp_path / "run", workers=1, progress=False)
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing was started, not even the run folder


def test_sweep_config_is_strict_and_resolved_dump_is_complete():
    s = SweepConfig.model_validate(SWEEP)
    data = yaml.safe_load(s.to_yaml())
    assert data["base"]["threat"]["protocol"] == "fedsgd"  # every default written out
    assert data["defenses"] == [[], ["prune:0.9"], ["clip:4", "noise:0.01"]]
    assert set(data) == set(SweepConfig.model_fields)


def test_cli_bad_sweep_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sweep(defenses=[["prune:0.9"], ["nosie:0.1"]])))
    assert main(["evaluate", str(path), "--out", str(tmp_path / "run"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: defenses[1]: unknown defense 'nosie'")
    assert main(["evaluate", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    assert main(["evaluate", str(path), "--out", str(tmp_path / "run"), "--executor", "dask"]) == 2
