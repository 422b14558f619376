"""The LAVP validation study (seed 000): structure of a tiny run, orientation of the correlations, the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from gradaudit.errors import ConfigError
from gradaudit.report.validation import validation_markdown, write_validation
from gradaudit.evaluation.lavp_validation import (QUALITY_SIGN, ValidationResult, attack_configs, correlate,
                                          load_validation, oriented_quality, paired_delta, validate_proxies)


@pytest.fixture(scope="module")
def tiny(fashion_mnist_root):
    """3 Fashion-MNIST samples (the suite's own IDX fixture), LeNet, exact proxies (max and min), a few attack and
    local steps."""
    return validate_proxies("fashion-mnist", "lenet", [0, 1, 2], iterations=3, optimizers={"cosine": "lbfgs"},
                            which=("max", "min"), method="dense", n_boot=50, local_steps=3,
                            data_root=str(fashion_mnist_root))


def test_tiny_run_structure(tiny: ValidationResult):
    assert [r["index"] for r in tiny.rows] == [0, 1, 2]
    for r in tiny.rows:
        for key in ("grad_norm", "l2_max", "l2_min", "cosine_max", "cosine_min", "fused_rank_max",
                    "l2_psnr", "l2_ssim", "l2_mse", "cosine_psnr", "local_l2_common_err", "local_cosine_own_err",
                    "l2_min_over_max"):
            assert key in r, key
        assert r["label"] == r["true_label"] and r["label_source"] == "given"
        assert 0 < r["l2_min"] <= r["l2_max"] and np.isfinite(r["l2_psnr"])
        assert r["local_l2_common_err"] > 0
    studies = {(c["study"], c["attack"], c["metric"]) for c in tiny.correlations}
    assert ("attack", "l2", "psnr") in studies and ("attack", "cosine", "ssim") in studies
    assert ("local", "l2", "err_common") in studies and ("local", "cosine", "err_own") in studies
    # LPIPS is either computed or its absence recorded, never silently faked
    assert tiny.meta["lpips"] == "ok" or tiny.meta["lpips"].startswith(("unavailable", "not requested"))
    if tiny.meta["lpips"] != "ok":
        assert not any(c["metric"] == "lpips" for c in tiny.correlations)
    assert tiny.meta["attacks"]["l2"]["optimizer"] == "lbfgs" and tiny.meta["attacks"]["cosine"]["preset"] == \
        "inverting-gradients"


def test_correlations_bounded_with_ordered_cis(tiny: ValidationResult):
    finite = 0
    for c in tiny.correlations:
        if np.isfinite(c["rho"]):
            finite += 1
            assert -1 <= c["rho"] <= 1
            assert -1 <= c["ci_low"] <= c["ci_high"] <= 1
        if np.isfinite(c["delta"]):
            assert -2 <= c["delta_ci_low"] <= c["delta_ci_high"] <= 2
        assert c["orientation"] == (QUALITY_SIGN[c["metric"]] if c["study"] == "attack" else -1)
    assert finite > 0
    # MSE is negated, so its rho equals PSNR's (PSNR = -10 log10 MSE, below the cap)
    for p in ("grad_norm", "l2_max"):
        a, b = tiny.correlation(p, "mse", "l2"), tiny.correlation(p, "psnr", "l2")
        assert a["rho"] == pytest.approx(b["rho"])


def test_outputs_written(tiny: ValidationResult, tmp_path):
    files = write_validation(tiny, tmp_path, title="tiny")
    rows = list(csv.DictReader(files["validation"].open()))
    assert len(rows) == 3 and "cosine_max" in rows[0] and "l2_psnr" in rows[0]
    corr = list(csv.DictReader(files["correlations"].open()))
    assert {"study", "attack", "metric", "proxy", "rho", "ci_low", "ci_high", "delta"} <= set(corr[0])
    md = files["tables"].read_text()
    assert "| proxy | MSE (L2) | PSNR (L2) | SSIM (L2) |" in md and "| l2_max |" in md and "local" in md
    # the saved files give the same tables back
    assert validation_markdown(load_validation(tmp_path), "tiny") == md


def test_orientation_on_synthetic_proxies():
    rows = [{"index": i} for i in range(8)]
    psnr = np.array([12.0, 30.0, 18.0, 25.0, 9.0, 40.0, 22.0, 15.0])
    mse = 10 ** (-psnr / 10)
    for r, p in zip(rows, psnr):
        r["grad_norm"] = 1.0  # constant: undefined rho
        r["perfect"] = p      # a proxy equal to the PSNR
        r["reversed"] = -p
    for metric, values in (("psnr", psnr), ("mse", mse)):
        q = oriented_quality(metric, values)
        out = {c["proxy"]: c for c in correlate(rows, ["perfect", "reversed", "grad_norm"], q, study="attack",
                                                attack="l2", metric=metric, orientation=QUALITY_SIGN[metric],
                                                n_boot=100, seed=0)}
        assert out["perfect"]["rho"] == pytest.approx(1.0)      # proxy up <-> better reconstruction
        assert out["reversed"]["rho"] == pytest.approx(-1.0)
        assert out["perfect"]["ci_low"] == pytest.approx(1.0)
        assert np.isnan(out["grad_norm"]["rho"])
    # paired difference: a perfect proxy beats a reversed one by 2, on every resample
    d = paired_delta(psnr, -psnr, psnr, n_boot=100)
    assert d["delta"] == pytest.approx(2.0) and d["delta_ci_low"] == pytest.approx(2.0)


def test_rejects_bad_settings():
    with pytest.raises(ConfigError):
        validate_proxies("embedded", "lenet", [0, 1, 2], which=("max", "min"), method="lanczos")
    with pytest.raises(ConfigError):
        validate_proxies("embedded", "lenet", [0, 1])
    with pytest.raises(ConfigError):
        attack_configs(["l2"], optimizers={"l2": "sgd"})
    cfg = attack_configs(["l2", "cosine"], optimizers={"cosine": "lbfgs"}, iterations={"l2": 7})
    assert cfg["l2"] == ("dlg", {"optimizer": "lbfgs", "signed": False, "lr": 1.0, "lbfgs_inner_steps": 20,
                                 "schedule": "none", "iterations": 7, "tune": "off"})
    assert cfg["cosine"][0] == "inverting-gradients" and cfg["cosine"][1]["iterations"] == 60


def test_cli_validate(tmp_path, capsys, fashion_mnist_root):
    from gradaudit.cli import main

    out = tmp_path / "val"
    assert main(["vulnerability", "--validate", "--dataset", "fashion-mnist", "--data-root", str(fashion_mnist_root),
                 "--limit", "3", "--iterations", "2",
                 "--cosine-optimizer", "lbfgs", "--n-boot", "20", "--local-steps", "2", "--out", str(out)]) == 0
    for f in ("validation.csv", "correlations.csv", "validation.md", "validation.json"):
        assert (out / f).is_file(), f
    assert "| grad_norm |" in capsys.readouterr().out
    assert main(["vulnerability", "--validate", "--limit", "3", "--which", "both", "--out", str(tmp_path)]) == 2


def test_recovered_labels_path(fashion_mnist_root):
    """Labels unknown to the server: attacks and proxies use the iDLG label (exact for B = 1 here)."""
    res = validate_proxies("fashion-mnist", "lenet", [3, 4, 5], iterations=1, optimizers={"cosine": "lbfgs"},
                           labels_known=False, n_boot=10, local_steps=1, lpips=None,
                           data_root=str(fashion_mnist_root))
    for r in res.rows:
        assert r["label_source"] == "idlg" and r["label"] == r["true_label"]
        assert r["l2_label_accuracy"] == 1.0
    assert res.meta["labels_known"] is False and res.meta["lpips"] == "not requested"
