"""The command line, in process: exit codes, one-line errors, --debug, and the files an attack writes.

Attacks run for 2 iterations on one embedded 32x32 image with LeNet, so the whole file stays fast.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from gradaudit.attacks.registry import attack_names
from gradaudit.cli import main
from gradaudit.data import DATASETS
from gradaudit.defenses import DEFENSES
from gradaudit.errors import ConfigError, ObservationError
from gradaudit.models import MODELS
from gradaudit.threat import Observation

from _files import edit_meta

FAST = ["--set", "attack.iterations=2"]


pytestmark = pytest.mark.usefixtures("single_thread")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert len(lines[0]) > len("error: ") + 5
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, single_thread):
    """One full (tiny) audit through the CLI; its observation is reused by the --observation tests."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["attack", "--out", str(out), *FAST, "--batch-size", "1"])
    assert code == 0
    return out


def _copy_observation(run_dir, dest):
    for suffix in (".safetensors", ".json"):
        shutil.copy(run_dir / f"observation{suffix}", dest / f"obs{suffix}")
    return dest / "obs"


def _edit_json(stem, edit):
    """Edit a metadata field and reseal the checksum, to reach the checks behind it."""
    edit_meta(stem, edit)


# ------------------------------------------------------------------------------------------------ list
def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert {"dlg", "inverting-gradients", "gradinversion", "cpa", "robbing-the-fed",
            "tensor-features"} <= set(attack_names())
    for name in [*attack_names(), *MODELS, *DATASETS, *DEFENSES, "package.module:factory"]:
        assert name in out, name
    attacks_line = next(line for line in out.splitlines() if line.startswith("attacks"))
    assert attacks_line == "attacks: " + ", ".join(attack_names())


# ----------------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("flag, bad, valid", [
    ("--model", "lenett", ["lenet", "convnet", "resnet18", "mlp"]),
    ("--dataset", "cifar11", ["embedded", "cifar10", "cifar100", "fashion-mnist", "image-folder", "lfw"]),
    ("--attack", "dlgg", ["dlg", "inverting-gradients", "gradinversion"]),
    ("--defense", "nosie:0.1", ["noise"]),
])
def test_unknown_names_exit_2_with_one_line_listing_valid_names(tmp_path, capsys, flag, bad, valid):
    out = tmp_path / "out"
    assert main(["attack", "--out", str(out), flag, bad, *FAST]) == 2
    line = _one_error_line(capsys)
    assert f"'{bad.split(':')[0]}'" in line
    assert "did you mean" in line
    for name in valid:
        assert name in line
    assert not out.exists()  # nothing was written before the input was validated


@pytest.mark.parametrize("argv", [
    ["attack", "--out", "X", "--bogus"],
    ["attack", "--out", "X", "--batch-size", "abc"],
    ["attack", "--out", "X", "--labels", "maybe"],
    ["attack"],  # missing --out
    ["nonsense"],
])
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, argv):
    argv = [str(tmp_path / "o") if a == "X" else a for a in argv]
    assert main(argv) == 2
    _one_error_line(capsys)


def test_unknown_option_is_named(tmp_path, capsys):
    assert main(["attack", "--out", str(tmp_path), "--bogus"]) == 2
    assert "--bogus" in _one_error_line(capsys)


def test_batch_larger_than_dataset_exits_2(tmp_path, capsys):
    assert main(["attack", "--out", str(tmp_path / "o"), "--batch-size", "65", *FAST]) == 2
    line = _one_error_line(capsys)
    assert "65" in line and "64" in line


@pytest.mark.parametrize("argv", [["--iterations", "-1"], ["--set", "attack.iterations=-3"]])
def test_negative_iterations_exit_2(tmp_path, capsys, argv):
    assert main(["attack", "--out", str(tmp_path / "o"), *argv]) == 2
    assert "attack.iterations" in _one_error_line(capsys)


def test_bad_device_exits_2(tmp_path, capsys):
    assert main(["attack", "--out", str(tmp_path / "o"), "--device", "gpu", *FAST]) == 2
    assert "device" in _one_error_line(capsys)


def test_unknown_config_key_exits_2_with_suggestion(tmp_path, capsys):
    assert main(["attack", "--out", str(tmp_path / "o"), "--set", "attack.iteratons=2"]) == 2
    line = _one_error_line(capsys)
    assert "'attack.iteratons'" in line and "did you mean 'attack.iterations'" in line


def test_unknown_key_in_config_file_exits_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("threat:\n  batchsize: 2\n")
    assert main(["attack", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    assert "did you mean 'threat.batch_size'" in _one_error_line(capsys)


def test_debug_raises_instead(tmp_path, capsys):
    with pytest.raises(ConfigError, match="did you mean 'attack.iterations'"):
        main(["--debug", "attack", "--out", str(tmp_path / "o"), "--set", "attack.iteratons=2"])
    with pytest.raises(ConfigError, match="unknown model 'lenett'"):
        main(["--debug", "attack", "--out", str(tmp_path / "o"), "--model", "lenett"])
    # and without --debug the next call is back to one line
    assert main(["attack", "--out", str(tmp_path / "o"), "--model", "lenett"]) == 2
    _one_error_line(capsys)


def test_no_arguments_prints_help_without_empty_error(capsys):
    main([])
    captured = capsys.readouterr()
    assert "Usage" in captured.out or "Usage" in captured.err
    assert all(line.strip() != "error:" for line in captured.err.splitlines())


# ------------------------------------------------------------------------------- full attack, files
def test_attack_writes_all_files(run_dir):
    for name in ("grid.png", "metrics.json", "config.yaml", "reconstructions.safetensors",
                 "observation.safetensors", "observation.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = metrics["runs"][0]
    psnr = run["scores"]["psnr"]
    assert isinstance(psnr, list) and len(psnr) == 1 and isinstance(psnr[0], float)
    assert run["batch_size"] == 1
    assert run["reconstruction"]["iterations"] == 2
    assert run["config"]["attack"]["iterations"] == 2
    # the fit carries the reconstruction's PSNR and the flat mean-colour image's, and the verdict read off them
    fit = run["fit"]
    assert fit["psnr"] == pytest.approx(run["scores"]["mean_psnr"]) and 0 < fit["flat_psnr"] < 40
    assert fit["recovered_nothing"] == (not fit["underfit"] and fit["psnr"] < fit["flat_psnr"])

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["attack"]["iterations"] == 2 and cfg["threat"]["batch_size"] == 1
    assert cfg["model"]["name"] == "lenet" and cfg["data"]["name"] == "embedded"

    from safetensors.torch import load_file

    rec = load_file(str(run_dir / "reconstructions.safetensors"))
    assert rec["run0/images"].shape == (1, 3, 32, 32)
    assert rec["run0/images"].min() >= 0 and rec["run0/images"].max() <= 1

    obs = Observation.load(run_dir / "observation")
    assert obs.batch_size == 1 and obs.model.name == "lenet" and obs.model.input_shape == (3, 32, 32)
    assert obs.labels is None  # the default threat model does not grant the labels
    assert obs.update_kind == "gradient"


def test_attack_same_seed_is_reproducible(run_dir, tmp_path):
    out = tmp_path / "again"
    assert main(["attack", "--out", str(out), *FAST, "--batch-size", "1"]) == 0
    a, b = Observation.load(run_dir / "observation"), Observation.load(out / "observation")
    for k in a.update:
        assert torch.equal(a.update[k], b.update[k])


@pytest.mark.parametrize("suffix", ["", ".safetensors", ".json"])
def test_attack_observation_writes_unscored_metrics(run_dir, tmp_path, capsys, suffix):
    out = tmp_path / "replay"
    obs_path = f"{run_dir / 'observation'}{suffix}"
    assert main(["attack", "--observation", obs_path, "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scores"] is None and metrics["ground_truth"] is None
    assert metrics["reconstruction"]["iterations"] == 2
    for name in ("grid.png", "config.yaml", "reconstructions.safetensors"):
        assert (out / name).is_file()
    from safetensors.torch import load_file

    assert load_file(str(out / "reconstructions.safetensors"))["images"].shape == (1, 3, 32, 32)
    assert "Traceback" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad observations
def test_missing_observation_exits_2(tmp_path, capsys):
    assert main(["attack", "--observation", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), *FAST]) == 2
    line = _one_error_line(capsys)
    assert "not found" in line and "nope" in line
    assert not (tmp_path / "o").exists()


def test_tampered_observation_exits_2_mentioning_checksum(run_dir, tmp_path, capsys):
    stem = _copy_observation(run_dir, tmp_path)
    st = stem.with_suffix(".safetensors")
    raw = bytearray(st.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    st.write_bytes(bytes(raw))
    assert main(["attack", "--observation", str(stem), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "checksum" in _one_error_line(capsys)


def test_truncated_observation_exits_2(run_dir, tmp_path, capsys):
    stem = _copy_observation(run_dir, tmp_path)
    st = stem.with_suffix(".safetensors")
    st.write_bytes(st.read_bytes()[:100])
    assert main(["attack", "--observation", str(stem), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "checksum" in _one_error_line(capsys)


def test_observation_with_batch_size_zero_exits_2(run_dir, tmp_path, capsys):
    stem = _copy_observation(run_dir, tmp_path)
    _edit_json(stem, lambda m: m.update(batch_size=0))
    assert main(["attack", "--observation", str(stem), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "batch_size" in _one_error_line(capsys)
    with pytest.raises(ObservationError):
        main(["--debug", "attack", "--observation", str(stem), "--out", str(tmp_path / "o"), *FAST])


def test_observation_for_other_architecture_exits_2_naming_a_tensor(run_dir, tmp_path, capsys):
    stem = _copy_observation(run_dir, tmp_path)
    _edit_json(stem, lambda m: m["model"].update(name="convnet"))
    assert main(["attack", "--observation", str(stem), "--out", str(tmp_path / "o"), *FAST]) == 2
    line = _one_error_line(capsys)
    assert "'features.0.weight'" in line and "(32, 3, 3, 3)" in line


def test_observation_for_other_width_exits_2_naming_tensor_and_both_shapes(run_dir, tmp_path, capsys):
    stem = _copy_observation(run_dir, tmp_path)
    _edit_json(stem, lambda m: m["model"].update(kwargs={"width": 8}))
    assert main(["attack", "--observation", str(stem), "--out", str(tmp_path / "o"), *FAST]) == 2
    line = _one_error_line(capsys)
    assert "'body.0.weight'" in line and "(12, 3, 5, 5)" in line and "(8, 3, 5, 5)" in line


def test_observation_with_unknown_model_exits_2(run_dir, tmp_path, capsys):
    stem = _copy_observation(run_dir, tmp_path)
    _edit_json(stem, lambda m: m["model"].update(name="lenett"))
    assert main(["attack", "--observation", str(stem), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "did you mean 'lenet'" in _one_error_line(capsys)
