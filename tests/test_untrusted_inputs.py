"""Untrusted and malformed inputs, as a new user (or someone handing files to one) would produce them.

Every case must exit with status 2 and one line on stderr (no traceback), before any work, creating no file
and changing nothing already stored. Code named in a file is never imported or run without explicit trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from gradaudit.cli import main
from gradaudit.threat import Observation
from gradaudit.trust import UntrustedCodeError

from _files import edit_meta

FAST = ["--set", "attack.iterations=2"]
pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------------ helpers
def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with the SHA-256 of its bytes (folders: "dir")."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(capsys, root: Path, argv: list[str], contains: str | tuple[str, ...] = ()) -> str:
    """Run the CLI on ``argv``: exit 2, exactly one ``error:`` line, no traceback, ``root`` unchanged."""
    before = snapshot(root)
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err, captured.out[-500:])
    assert "Traceback" not in captured.err and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for text in (contains,) if isinstance(contains, str) else contains:
        assert text in lines[0], lines[0]
    assert snapshot(root) == before, "a refused command created or changed files"
    return lines[0]


@pytest.fixture(scope="module")
def captured(tmp_path_factory, single_thread):
    """A genuine observation written by a (tiny) attack run."""
    out = tmp_path_factory.mktemp("genuine") / "run"
    assert main(["attack", "--out", str(out), *FAST]) == 0
    return out / "observation"


@pytest.fixture
def work(tmp_path, captured):
    """A working folder holding a copy of the genuine observation as ``obs``."""
    for suffix in (".safetensors", ".json"):
        shutil.copy(captured.with_suffix(suffix), tmp_path / f"obs{suffix}")
    return tmp_path


def _craft_os_system(stem: Path, marker: Path, reseal: bool = True) -> None:
    edit_meta(stem, lambda m: m.update(model={"name": "os:system", "num_classes": 10, "input_shape": [3, 32, 32],
                                              "kwargs": {"command": f"touch {marker}"}}), reseal=reseal)


# ----------------------------------------------------------------------------------------- no code from data
@pytest.mark.parametrize("command", [["observation", "validate"], ["attack", "--observation"]])
def test_crafted_observation_runs_no_code(work, capsys, command):
    marker = work / "MARKER"
    _craft_os_system(work / "obs", marker)
    argv = [*command, str(work / "obs.json")] + (["--out", str(work / "o"), *FAST] if command[0] == "attack" else [])
    refused(capsys, work, argv, ("os:system", "--trust-model-code"))
    assert not marker.exists()


def test_crafted_observation_through_the_python_api_runs_no_code(work):
    from gradaudit.attacks import build_attack

    marker = work / "MARKER"
    _craft_os_system(work / "obs", marker)
    obs = Observation.load(work / "obs")  # loading is safe: the model spec is data
    with pytest.raises(UntrustedCodeError, match="trust_code=True"):
        build_attack("inverting-gradients", iterations=1).reconstruct(obs)
    assert not marker.exists()


def test_trusted_factory_in_an_observation_is_built(work, monkeypatch, capsys):
    (work / "ga_trusted_mod.py").write_text("from gradaudit.models import LeNet\n"
                                            "def make(num_classes, input_shape):\n"
                                            "    return LeNet(num_classes=num_classes, input_shape=input_shape)\n")
    monkeypatch.syspath_prepend(str(work))
    edit_meta(work / "obs", lambda m: m["model"].update(name="ga_trusted_mod:make", kwargs={}))
    assert main(["observation", "validate", str(work / "obs")]) == 2
    assert "ga_trusted_mod" not in sys.modules
    capsys.readouterr()
    assert main(["observation", "validate", str(work / "obs"), "--trust-model-code"]) == 0
    assert "ok:" in capsys.readouterr().out


def test_code_in_a_config_or_sweep_needs_trust(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "os:system", "kwargs": {"command": f"touch {marker}"}}}))
    refused(capsys, tmp_path, ["attack", "--config", str(cfg), "--out", str(tmp_path / "o"), *FAST],
            "--trust-model-code")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": {"model": {"name": "os:system", "kwargs": {"command": "true"}}},
                                     "attacks": [{"preset": "dlg"}]}))
    refused(capsys, tmp_path, ["evaluate", str(sweep), "--out", str(tmp_path / "run"), "--workers", "1"],
            "--trust-model-code")
    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump({"attack": {"preset": "gi-z", "params": {"generator": "os:getcwd"}}}))
    refused(capsys, tmp_path, ["attack", "--config", str(gen), "--out", str(tmp_path / "o")], "generator 'os:getcwd'")
    trusting = tmp_path / "trusting.yaml"  # a file cannot grant itself trust
    trusting.write_text(yaml.safe_dump({"attack": {"params": {"trust_code": True}}}))
    refused(capsys, tmp_path, ["attack", "--config", str(trusting), "--out", str(tmp_path / "o")], "trust_code")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ integrity
def test_edited_json_field_is_refused(work, capsys):
    edit_meta(work / "obs", lambda m: m.update(labels_known=True), reseal=False)
    refused(capsys, work, ["observation", "validate", str(work / "obs")], "do not match their checksum")
    refused(capsys, work, ["attack", "--observation", str(work / "obs"), "--out", str(work / "o"), *FAST],
            "checksum")


def test_crafted_and_unsealed_json_is_refused_by_the_checksum_first(work, capsys):
    _craft_os_system(work / "obs", work / "MARKER", reseal=False)
    refused(capsys, work, ["observation", "validate", str(work / "obs")], "checksum")


def test_json_without_checksum_is_refused_unless_legacy_is_allowed(work, capsys):
    edit_meta(work / "obs", lambda m: m.pop("integrity"), reseal=False)
    refused(capsys, work, ["observation", "validate", str(work / "obs")], ("no checksum", "--allow-legacy"))
    assert main(["observation", "validate", str(work / "obs"), "--allow-legacy"]) == 0
    out = capsys.readouterr()
    assert "warning: legacy observation" in out.err and "not verified" in out.err and "ok:" in out.out
    assert main(["attack", "--observation", str(work / "obs"), "--allow-legacy", "--out", str(work / "o"),
                 *FAST]) == 0
    assert "not verified" in json.loads((work / "o" / "metrics.json").read_text())["observation_integrity"]


def test_generator_checkpoint_edit_is_refused(tmp_path):
    from gradaudit.attacks.priors import DCGAN, CheckpointError, load_generator, save_generator

    save_generator(tmp_path / "g", DCGAN(8, 3, 16, 4))
    assert load_generator(tmp_path / "g").latent_dim == 8
    edit_meta(tmp_path / "g", lambda m: m["training"].update(dataset="lfw"), reseal=False)
    with pytest.raises(CheckpointError, match="checksum"):
        load_generator(tmp_path / "g")
    edit_meta(tmp_path / "g", lambda m: m.pop("integrity"), reseal=False)
    with pytest.raises(CheckpointError, match="--allow-legacy"):
        load_generator(tmp_path / "g")
    assert load_generator(tmp_path / "g", allow_legacy=True).legacy


# --------------------------------------------------------------------------------- malformed observations
@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(batch_size="abc"), "'batch_size' must be int"),
    (lambda m: m.update(batch_size=None), "'batch_size' must be int"),
    (lambda m: m.update(bn_statistics_known=True), "BN statistics"),
    (lambda m: m.update(bn_statistics_known=True, num_bn_layers=3), "lacks 'bn/0/mean'"),
])
def test_malformed_observation_metadata(work, capsys, edit, message):
    edit_meta(work / "obs", edit)
    refused(capsys, work, ["observation", "validate", str(work / "obs")], message)
    refused(capsys, work, ["attack", "--observation", str(work / "obs"), "--out", str(work / "o"), *FAST], message)


def test_observation_that_is_not_a_file(tmp_path, capsys):
    (tmp_path / "obs.json").mkdir()
    refused(capsys, tmp_path, ["observation", "validate", str(tmp_path / "obs.json")])
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00binary")
    (tmp_path / "bin.safetensors").write_bytes(b"x")
    refused(capsys, tmp_path, ["observation", "inspect", str(tmp_path / "bin")], "not a text")


# ---------------------------------------------------------------------------------------- config files
def test_binary_config_file(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(bytes(range(256)) * 4)
    refused(capsys, tmp_path, ["attack", "--config", str(cfg), "--out", str(tmp_path / "o")], "not UTF-8 text")
    refused(capsys, tmp_path, ["evaluate", str(cfg), "--out", str(tmp_path / "run")], "not UTF-8 text")


def test_yaml_syntax_error_is_one_line_with_its_place(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("attack:\n  preset: dlg\n  iterations: [1, 2\nmodel: {name: lenet\n")
    line = refused(capsys, tmp_path, ["attack", "--config", str(cfg), "--out", str(tmp_path / "o")],
                   "is not valid YAML")
    assert "line" in line and "column" in line
    refused(capsys, tmp_path, ["attack", "--out", str(tmp_path / "o"), "--set", "attack.regularizers={tv: [}"],
            "cannot parse value")


@pytest.mark.parametrize("content, message", [
    ("", "is empty"), ("{}\n", "the sweep is empty"), ("attacks: []\n", "attacks is an empty list"),
    ("defenses: []\n", "defenses is an empty list"), ("batch_sizes: []\n", "batch_sizes is an empty list"),
    ("- just\n- a list\n", "mapping"),
])
def test_empty_sweep_is_refused(tmp_path, capsys, content, message):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(content)
    refused(capsys, tmp_path, ["evaluate", str(sweep), "--out", str(tmp_path / "run")], message)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "attack.lr"), (["--lr", "nan"], "attack.lr"), (["--set", "attack.lr=.inf"], "attack.lr"),
    (["--set", "attack.regularizers={tv: .nan}"], "attack.regularizers"),
    (["--set", "attack.params.decor=.inf"], "finite"), (["--set", "model.kwargs.width=.inf"], "finite"),
    (["--local-lr", "inf", "--protocol", "fedavg"], "threat.local_lr"), (["--iterations", "-5"], "iterations"),
    (["--data-root", "/tmp"], "ships inside the installed packages"),
    (["--dataset", "lfw", "--download"], "ships inside the installed packages"),
])
def test_bad_attack_values(tmp_path, capsys, argv, message):
    refused(capsys, tmp_path, ["attack", "--out", str(tmp_path / "o"), *argv], message)


def test_cifar_hint_names_a_flag_the_command_has(tmp_path, capsys):
    line = refused(capsys, tmp_path, ["attack", "--dataset", "cifar10", "--out", str(tmp_path / "o")], "CIFAR-10")
    assert "--download" in line
    from gradaudit.cli import app
    import typer.main

    attack_cmd = typer.main.get_command(app).commands["attack"]
    assert any("--download" in p.opts for p in attack_cmd.params)


# ------------------------------------------------------------------------------------------ output places
def test_attack_out_is_checked_before_the_attack(tmp_path, capsys, monkeypatch):
    import gradaudit.api.attack as api

    def no_attack(*a, **k):
        raise AssertionError("the attack ran before --out was checked")

    monkeypatch.setattr(api, "run_attack", no_attack)
    (tmp_path / "afile").write_text("x")
    refused(capsys, tmp_path, ["attack", "--out", str(tmp_path / "afile")], "is not a folder")
    refused(capsys, tmp_path, ["attack", "--out", str(tmp_path / "afile" / "sub")], "is a file, not a folder")
    (tmp_path / "run" / "grid.png").mkdir(parents=True)
    refused(capsys, tmp_path, ["attack", "--out", str(tmp_path / "run")], "cannot be overwritten")
    if os.path.isdir("/proc/self") and not os.access("/proc/self", os.W_OK):
        refused(capsys, tmp_path, ["attack", "--out", "/proc/self/gradaudit-out"], "cannot be created")


def test_attack_observation_out_is_checked_before_the_attack(work, capsys, monkeypatch):
    import gradaudit.api.attack as api

    monkeypatch.setattr(api, "build_attack", lambda *a, **k: pytest.fail("attack built before --out was checked"))
    (work / "afile").write_text("x")
    refused(capsys, work, ["attack", "--observation", str(work / "obs"), "--out", str(work / "afile")],
            "is not a folder")


def test_evaluate_out_pointing_at_a_file(tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"attacks": [{"preset": "dlg", "overrides": {"iterations": 1}}]}))
    (tmp_path / "afile").write_text("x")
    refused(capsys, tmp_path, ["evaluate", str(sweep), "--out", str(tmp_path / "afile")], "is not a folder")


@pytest.mark.parametrize("content", [b"this is not a database at all" * 10, b""])
def test_run_folder_whose_store_is_not_a_database(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.sqlite").write_bytes(content or b"SQLite format 3\x00" + b"\x00" * 84)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"attacks": [{"preset": "dlg", "overrides": {"iterations": 1}}]}))
    refused(capsys, tmp_path, ["evaluate", str(sweep), "--out", str(run), "--workers", "1"], "results store")
    refused(capsys, tmp_path, ["report", str(run)], "results store")
    refused(capsys, tmp_path, ["utility", "--out", str(run), "--rounds", "1"], "results store")


def test_foreign_sqlite_database_is_left_alone(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    conn = sqlite3.connect(run / "results.sqlite")
    conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.commit()
    conn.close()
    refused(capsys, tmp_path, ["report", str(run)], "holds table 'accounts'")
    refused(capsys, tmp_path, ["utility", "--out", str(run), "--rounds", "1"], "holds table 'accounts'")


def test_report_of_a_folder_without_a_store(tmp_path, capsys):
    refused(capsys, tmp_path, ["report", str(tmp_path / "none")], "does not exist")
    (tmp_path / "empty").mkdir()
    refused(capsys, tmp_path, ["report", str(tmp_path / "empty")], "holds no results.sqlite")


# ------------------------------------------------------------------------------------------- utility
@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "rounds must be an integer >= 1"), (["--rounds", "-3"], "rounds"), (["--clients", "0"], "clients"),
    (["--lr", "inf"], "lr must be a positive number"), (["--batch-size", "0"], "batch_size"),
    (["--model", "convnet", "--model-kwargs", '{"norm": "bogus"}'], "norm"),
    (["--model", "os:system"], "--trust-model-code"), (["--train-size", "0"], "train_size"),
])
def test_utility_bad_options_create_nothing(tmp_path, capsys, argv, message):
    refused(capsys, tmp_path, ["utility", "--out", str(tmp_path / "run"), *argv], message)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ vulnerability
@pytest.mark.parametrize("argv, message", [
    (["--top", "-1"], "--top must be >= 1"), (["--top", "0"], "--top"), (["--limit", "0"], "--limit"),
    (["--model", "convnet", "--model-kwarg", "norm=bogus"], "norm"), (["--proxy", "l2_maxx"], "unknown proxy"),
    (["--proxy", "l2_min"], "unknown proxy"), (["--tol", "inf"], "tol"), (["--tol", "0"], "tol"),
    (["--criterion", "exact"], "criterion"), (["--indices", "0,999"], "out of range"),
    (["--model", "os:system"], "--trust-model-code"),
])
def test_vulnerability_bad_options(tmp_path, capsys, argv, message):
    refused(capsys, tmp_path, ["vulnerability", "--out", str(tmp_path / "v"), *argv], message)


@pytest.mark.parametrize("argv, message", [
    (["--iterations", "-5"], "iterations"), (["--n-boot", "0"], "n_boot"), (["--local-eps", "inf"], "local_eps"),
    (["--local-steps", "-1"], "local_steps"), (["--which", "both"], "lambda_min needs method='dense'"),
    (["--l2-optimizer", "sgd"], "unknown optimizer"),
])
def test_vulnerability_validate_options_are_checked_before_any_data(tmp_path, capsys, monkeypatch, argv, message):
    import gradaudit.api.vulnerability as api

    monkeypatch.setattr(api, "load_dataset", lambda *a, **k: pytest.fail("data loaded before the options were "
                                                                          "checked"))
    refused(capsys, tmp_path, ["vulnerability", "--validate", "--out", str(tmp_path / "v"), *argv], message)


# --------------------------------------------------------------------------------------------- images
def _png(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width`` x ``height`` grey pixels (a decompression bomb when huge)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * width
    idat = zlib.compress(row * min(height, 4))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(20000, 20000), (12000, 10000)])
def test_decompression_bomb_in_an_image_folder(tmp_path, capsys, size):
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "a" / "ok.png")
    _png(folder / "b" / "bomb.png", *size)
    refused(capsys, tmp_path, ["attack", "--dataset", "image-folder", "--data-root", str(folder), "--out",
                               str(tmp_path / "o"), *FAST], ("bomb.png", "too large"))
