"""The deployment audit: its file, its plan, its verdict, resuming after a kill, user weights, and its report."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gradaudit.api.audit import audit_deployment, check_audit
from gradaudit.cli import main
from gradaudit.errors import ConfigError
from gradaudit.evaluation.deployment.config import parse_deployment
from gradaudit.evaluation.deployment.plan import audit_batches, default_attacks, model_spec, rank_risk, split_data
from gradaudit.evaluation.deployment.verdict import build_verdict, dp_epsilon
from gradaudit.evaluation.store import CellRow, UtilityRow
from gradaudit.evaluation.sweep import defense_label
from gradaudit.evaluation.victims import train_victim
from gradaudit.models.weights import save_weights

CHROMIUM = Path("/usr/bin/chromium")


def tiny(**changes) -> dict:
    """A deployment small enough for the suite: LeNet on 16-pixel embedded photos, 2 audited samples."""
    dep = {"name": "tiny", "model": {"name": "lenet", "train": {"epochs": 1, "batch_size": 8}},
           "data": {"name": "embedded", "image_size": 16},
           "clients": {"protocol": "fedavg", "samples": 2, "local_epochs": 1, "local_batch_size": 1,
                       "local_lr": 0.05},
           "audit": {"rank": 4, "at_risk": 1, "typical": 1, "iterations": 4},
           "defenses": [["prune:0.9"]], "utility": {"rounds": 2, "clients": 2}, "workers": 1}
    for key, value in changes.items():
        dep[key] = value
    return dep


# ------------------------------------------------------------------------------------------------- the file
@pytest.mark.parametrize("change, needle", [
    ({"clients": {"protocl": "fedavg"}}, "clients.protocl"),
    ({"audit": {"rank": 2, "at_risk": 2, "typical": 1}}, "rank (2) must cover"),
    ({"clients": {"protocol": "fedsgd", "local_batch_size": 2}}, "describe FedAvg"),
    ({"defenses": [["prune:0.9"], ["prune:0.9"]]}, "twice"),
    ({"defenses": [["bogus:1"]]}, "bogus"),
    ({"threshold": {"psnr": float("inf")}}, "threshold.psnr"),
])
def test_bad_deployment_is_one_line(change, needle):
    with pytest.raises(ConfigError) as e:
        parse_deployment(tiny(**change))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_no_defense_is_always_audited_first():
    dep = parse_deployment(tiny(defenses=[["noise:0.01"]]))
    assert dep.defenses == [[], ["noise:0.01"]]


def test_minibatch_fedavg_gets_the_fedavg_attack_and_malicious_server_robbing_the_fed():
    dep = parse_deployment(tiny(audit={"rank": 4, "at_risk": 1, "typical": 0, "malicious_server": True}))
    names = [a.preset for a in default_attacks(dep)]
    assert names == ["fedavg-leakage", "inverting-gradients", "robbing-the-fed", "trap-weights"]
    fedsgd = parse_deployment(tiny(clients={"protocol": "fedsgd", "samples": 2}))
    assert [a.preset for a in default_attacks(fedsgd)] == ["inverting-gradients"]


def test_closed_forms_join_where_their_threat_model_applies():
    mlp = parse_deployment(tiny(model={"name": "mlp"}, clients={"protocol": "fedsgd", "samples": 4}))
    assert [a.preset for a in default_attacks(mlp)] == ["inverting-gradients", "spear"]
    vit = parse_deployment(tiny(model={"name": "vit"}, clients={"protocol": "fedsgd", "samples": 1}))
    assert [a.preset for a in default_attacks(vit)] == ["inverting-gradients", "april"]
    vit_batch = parse_deployment(tiny(model={"name": "vit"}, clients={"protocol": "fedsgd", "samples": 2}))
    assert [a.preset for a in default_attacks(vit_batch)] == ["inverting-gradients"]  # APRIL needs B=1


def test_public_part_and_private_pool_are_disjoint_and_batches_lead_with_the_audited_sample(tmp_path):
    dep = parse_deployment(tiny())
    data = split_data(dep)
    assert set(data.public).isdisjoint(data.pool) and len(data.public) + len(data.pool) == len(data.private)
    ranking = rank_risk(dep, tmp_path, data, model_spec(dep, data.private), None)
    assert len(ranking.rows) == 4 and len(ranking.at_risk) == 1 and len(ranking.typical) == 1
    values = [r["fused_rank_max"] for r in ranking.rows]
    assert values == sorted(values, reverse=True) and ranking.at_risk[0] == ranking.rows[0]["index"]
    batches = audit_batches(dep, data, ranking)
    assert [b[0] for b in batches] == ranking.audited
    assert all(len(b) == 2 and len(set(b)) == 2 and set(b) <= set(data.pool) for b in batches)
    assert not set(batches[0][1:]) & set(ranking.audited)


# ---------------------------------------------------------------------------------------------- the verdict
def _cell(defense: str, index: int, attack: str, psnr: float, ssim: float) -> CellRow:
    return CellRow(key=f"{defense}/{index}/{attack}", status="done", attack=attack, defense=defense, batch_size=2,
                   sample=0, seed=0, config={"data": {"indices": [index, 99]}}, psnr=psnr, ssim=ssim,
                   metrics={"scores": {"psnr": [psnr, 5.0], "ssim": [ssim, 0.0], "assignment": [0, 1]}})


def _utility(defense: str, loss: float) -> UtilityRow:
    return UtilityRow(key=defense, defense=defense, dataset="embedded", model="lenet", final_train_loss=loss,
                      test_accuracy=0.5, seconds=1.0, config={})


DP = defense_label(["dpsgd:1,0.5"])


def test_verdict_recommends_the_cheapest_defense_that_keeps_every_sample_below_the_threshold():
    dep = parse_deployment(tiny(defenses=[["prune:0.9"], ["noise:0.1"], ["dpsgd:1,0.5"]], epsilon_budget=1.0))
    cells = [_cell("none", 1, "ig", 25.0, 0.7), _cell("none", 2, "ig", 12.0, 0.1),
             _cell("prune:0.9", 1, "ig", 19.0, 0.3), _cell("prune:0.9", 1, "fedavg", 14.0, 0.6),  # SSIM counts
             _cell("prune:0.9", 2, "ig", 11.0, 0.1),
             _cell("noise:0.1", 1, "ig", 15.0, 0.2), _cell("noise:0.1", 2, "ig", 10.0, 0.1),
             _cell(DP, 1, "ig", 9.0, 0.1), _cell(DP, 2, "ig", 9.0, 0.1)]
    util = [_utility("none", 0.5), _utility("prune", 0.55), _utility("noise", 0.9), _utility("dp", 0.6)]
    v = build_verdict(dep, [1, 2], {1: "most at risk", 2: "typical"}, cells, [], util)
    assert [d.recognisable for d in v.defenses] == [1, 1, 0, 0]
    assert v.defenses[0].samples[0].attack == "ig" and v.defenses[0].samples[0].psnr == 25.0
    assert v.headline().startswith("Without a defense, 1 of 2 audited samples are rebuilt recognisably")
    # DP-SGD is cheaper than noise but its epsilon (sigma 0.5, one full-batch step) is above the budget of 1
    assert v.defenses[3].epsilon > 1.0 and "above the budget" in v.reasons[v.defenses[3].label]
    assert v.recommendation.label == "noise:0.1" and "Use noise:0.1" in v.recommendation_text()
    none = build_verdict(dep, [1, 2], {}, [c for c in cells if c.defense == "none"], [], util)
    assert none.recommendation is None and "No candidate defense" in none.recommendation_text()


def test_fedavg_epsilon_counts_every_local_step():
    dep = parse_deployment(tiny(clients={"protocol": "fedavg", "samples": 4, "local_epochs": 2,
                                         "local_batch_size": 2}))
    one, rounds = dp_epsilon(dep, ["dpsgd:1,1.1"])
    assert 0 < one < rounds
    assert dp_epsilon(dep, ["prune:0.9"]) == (None, None)


# ------------------------------------------------------------------------------------ the audit end to end
@pytest.fixture(scope="module")
def audited(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("audit") / "out"
    result = audit_deployment(tiny(), out, progress=False)
    return out, result


def test_audit_writes_the_verdict_and_the_report(audited):
    out, result = audited
    page = (out / "audit.html").read_text()
    assert 'id="recommendation"' in page and 'id="verdict"' in page and 'id="threat-model"' in page
    assert result.verdict.headline() in page.replace("&gt;", ">").replace("&#x27;", "'")
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["lines"][0].startswith("Without a defense, ")
    assert len(verdict["defenses"]) == 2 and all(len(d["samples"]) == 2 for d in verdict["defenses"])
    assert all(s["psnr"] is not None for d in verdict["defenses"] for s in d["samples"])
    assert result.victim["source"] == "trained" and (out / "victim.safetensors").is_file()
    assert result.sweep.total == 8 and result.verdict.fedavg_gain["pairs"] == 4
    assert [d.utility_loss is not None for d in result.verdict.defenses] == [True, True]


def test_rerun_after_a_kill_runs_only_what_is_missing(audited, tmp_path):
    out, first = audited
    with sqlite3.connect(out / "results.sqlite") as db:  # as if killed before these finished
        gone = [k for (k,) in db.execute("SELECT key FROM cells ORDER BY key LIMIT 3")]
        db.executemany("DELETE FROM cells WHERE key = ?", [(k,) for k in gone])
        db.execute("DELETE FROM utility WHERE defense != 'none'")
    risk_mtime = (out / "risk.json").stat().st_mtime_ns
    again = audit_deployment(tiny(), out, progress=False)
    assert again.sweep.skipped == 5 and again.sweep.done == 3
    assert again.victim["reused"] is True and (out / "risk.json").stat().st_mtime_ns == risk_mtime
    assert [d.label for d in again.verdict.defenses] == ["none", "prune:0.9"]
    assert again.verdict.defenses[1].utility_loss is not None


def test_user_weights_that_do_not_fit_are_refused_in_one_line_before_any_file(tmp_path):
    net, _ = train_victim("embedded", "convnet", epochs=1, image_size=16, model_kwargs={"norm": "none"})
    wrong = save_weights(net, tmp_path / "convnet.safetensors")
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as e:
        check_audit(parse_deployment(tiny(model={"name": "lenet", "weights": str(wrong)})), out)
    assert "\n" not in str(e.value) and "convnet.safetensors" in str(e.value) and not out.exists()
    assert main(["audit", str(_yaml(tmp_path, tiny(model={"name": "lenet", "weights": str(wrong)}))),
                 "--out", str(out)]) == 2 and not out.exists()
    fits, _ = train_victim("embedded", "lenet", epochs=1, image_size=16)
    good = save_weights(fits, tmp_path / "lenet.safetensors")
    check_audit(parse_deployment(tiny(model={"name": "lenet", "weights": str(good)})), out)
    assert not out.exists()


def _yaml(tmp_path: Path, dep: dict) -> Path:
    import yaml

    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(dep))
    return path


def test_cli_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    bad = _yaml(tmp_path, tiny(audit={"rnak": 3}))
    assert main(["audit", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "audit.rnak" in err and not (tmp_path / "o").exists()


def test_audit_page_loads_in_headless_chromium(audited, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed; make test installs it when run as root")
    out, _ = audited
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", (out / "audit.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-images-ok="true"' in proc.stdout and 'id="recommendation"' in proc.stdout
    assert 'data-images-count="2"' in proc.stdout  # the samples grid and the frontier
