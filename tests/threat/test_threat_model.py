"""Threat models named by what the server knows and controls: on every observation (and its file), in the
result records, and per attack (``gradaudit list --threats``)."""

from __future__ import annotations

import json

import pytest
import torch

from gradaudit.api.attack import attack_threats
from gradaudit.attacks.registry import attack_names, attack_threat
from gradaudit.cli import main
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, Observation, ServerKnowledge, ThreatModel, aggregate, applies

DATA = DataSpec("synthetic", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _share(name, kwargs=None, knowledge=ServerKnowledge(), b=2, seed=0, **client):
    spec = ModelSpec(name, 10, (3, 16, 16), kwargs or {})
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(b, 3, 16, 16, generator=g), torch.randint(0, 10, (b,), generator=g)
    return Client(build_model(spec), spec, DATA, knowledge=knowledge, seed=seed, **client).share(x, y)


def test_an_honest_fedsgd_observation_names_its_threat_model():
    tm = _share("lenet").threat_model
    assert tm == ThreatModel(server="honest", labels=True, bn_statistics="n/a", clients=1, update="FedSGD")
    assert tm.label() == "honest server, labels known, single client, FedSGD"


def test_malicious_models_bn_statistics_fedavg_and_aggregates_change_the_label():
    imprint = _share("imprint", {"base": "mlp", "bins": 8, "base_kwargs": {"width": 16}},
                     knowledge=ServerKnowledge(labels=False))
    assert imprint.threat_model.server == "malicious" and not imprint.threat_model.labels
    bn = _share("convnet", {"width": 4}, knowledge=ServerKnowledge(labels=True, bn_statistics=True))
    assert bn.threat_model.bn_statistics == "known"
    hidden = _share("convnet", {"width": 4}, knowledge=ServerKnowledge(labels=True, bn_statistics=False))
    assert hidden.threat_model.bn_statistics == "unknown"
    fedavg = _share("lenet", protocol="fedavg", local_lr=0.1, local_epochs=2, local_batch_size=1)
    assert fedavg.threat_model.update == "FedAvg (2 epochs of minibatches of 1)"
    secagg = aggregate([_share("lenet", seed=s) for s in range(3)])
    assert secagg.threat_model.clients == 3
    assert "secure aggregate of 3 clients" in secagg.threat_model.label()


def test_the_observation_file_carries_the_threat_model(tmp_path):
    obs = _share("lenet", knowledge=ServerKnowledge(labels=False))
    _, js = obs.save(tmp_path / "obs")
    meta = json.loads(js.read_text())
    assert meta["threat_model"]["label"] == "honest server, labels unknown, single client, FedSGD"
    assert Observation.load(tmp_path / "obs").threat_model == obs.threat_model


def test_every_attack_declares_a_threat_model_and_applies_checks_it():
    rows = {r["attack"]: r for r in attack_threats()}
    assert set(rows) == set(attack_names())
    malicious = {name for name, r in rows.items() if r["server"] == "malicious"}
    assert malicious == {"robbing-the-fed", "trap-weights", "fishing", "tensor-features", "feature-matching"}
    assert rows["gias"]["prior"] == "generator" and rows["inverting-gradients"]["prior"] == "none"
    honest = ThreatModel()
    assert applies(attack_threat("spear"), honest, "mlp", 8) == (True, "")
    ok, why = applies(attack_threat("april"), honest, "vit", 4)
    assert not ok and "at most 1" in why
    ok, why = applies(attack_threat("robbing-the-fed"), honest, "lenet", 4)
    assert not ok and "imprint" in why and "malicious" in why
    ok, why = applies(attack_threat("april"), ThreatModel(clients=4), "vit", 1)
    assert not ok and "secure aggregate" in why


def test_list_threats_prints_every_attack_with_its_server(capsys):
    assert main(["list", "--threats"]) == 0
    out = capsys.readouterr().out
    for name in ("spear", "april", "fishing", "trap-weights", "robbing-the-fed", "inverting-gradients"):
        assert name in out
    assert "malicious" in out and "honest" in out


@pytest.mark.parametrize("b", [1])
def test_the_attack_command_prints_and_records_the_threat_model(tmp_path, capsys, b, single_thread):
    out = tmp_path / "run"
    code = main(["attack", "--out", str(out), "--model", "mlp", "--attack", "spear", "--batch-size", str(b),
                 "--labels", "unknown", "--set", "data.image_size=16"])
    assert code == 0
    assert "threat model: honest server, labels unknown, single client, FedSGD" in capsys.readouterr().out
    record = json.loads((out / "metrics.json").read_text())["runs"][0]
    assert record["threat_model"]["server"] == "honest" and record["attack_threat"]["labels"] == "ignores"
    assert record["scores"]["mean_psnr"] >= 60
