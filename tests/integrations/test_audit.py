"""Capture and audit of updates from a running federation (framework-free part: no flwr needed)."""

from __future__ import annotations

import math

import pytest
import torch

from gradaudit.data import load_dataset
from gradaudit.errors import ConfigError, ObservationError
from gradaudit.evaluation.store import CellRow, ResultsStore
from gradaudit.integrations.audit import AuditStore, Auditor, local_update_observation, name_weights
from gradaudit.models.registry import ModelSpec, build_model
from gradaudit.threat.client import Client, ServerKnowledge
from gradaudit.threat.observation import DataSpec


@pytest.fixture(scope="module")
def setting(single_thread):
    ds = load_dataset("embedded")
    spec = ModelSpec("lenet", ds.num_classes, ds.shape)
    data = DataSpec(ds.name, tuple(ds.mean), tuple(ds.std))
    images, labels = ds.batch([0, 9])
    return spec, data, images, labels


def _plain_sgd(model, data, images, labels, steps, lr):
    """What an ordinary client does: torch.optim.SGD, K full-batch steps; returns state_dict arrays."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model((images - mean) / std), labels).backward()
        opt.step()
    return [v.detach().numpy().copy() for v in model.state_dict().values()]


def test_captured_update_equals_the_threat_model_client(setting):
    """theta_0 - theta_K of a plain SGD client is the update gradaudit's own FedAvg client computes."""
    spec, data, images, labels = setting
    torch.manual_seed(3)
    model = build_model(spec)
    sent = [v.detach().numpy().copy() for v in model.state_dict().values()]
    ours = Client(model, spec, data, protocol="fedavg", local_steps=3, local_lr=0.05,
                  knowledge=ServerKnowledge(labels=False)).share(images, labels)
    returned = _plain_sgd(model, data, images, labels, steps=3, lr=0.05)
    obs = local_update_observation(spec, data, sent, returned, batch_size=2, local_steps=3, local_lr=0.05)
    assert obs.update_kind == "local_update" and obs.labels is None
    diff = max(float((obs.update[k] - ours.update[k]).abs().max()) for k in ours.update)
    assert diff < 1e-6
    assert max(float(ours.update[k].abs().max()) for k in ours.update) > 1e-3  # a real update, not zeros


def test_name_weights_orders_and_refusals():
    model = build_model(ModelSpec("convnet", 4, (3, 8, 8), {"norm": "bn", "width": 2}))
    state = [v.numpy() for v in model.state_dict().values()]
    params, buffers = name_weights(model, state)
    assert list(params) == [n for n, _ in model.named_parameters()]
    assert set(buffers) == {n for n, _ in model.named_buffers()} and buffers
    params_only = [p.detach().numpy() for p in model.parameters()]
    p2, b2 = name_weights(model, params_only)
    assert list(p2) == list(params) and b2 == {}
    with pytest.raises(ObservationError, match="got 3 weight arrays"):
        name_weights(model, state[:3])
    bad = list(params_only)
    bad[0] = bad[0][:1]
    with pytest.raises(ObservationError, match="features.0.weight.*shape"):
        name_weights(model, bad)


def test_auditor_selection_and_validation(tmp_path, setting):
    spec, data, _, _ = setting
    a = Auditor(tmp_path, spec, data, attack="dlg", attack_options={"iterations": 1}, clients=2, rounds=[2])
    assert a.select(1, ["0", "1", "2"]) == []
    assert a.select(2, ["10", "2", "1"]) == ["1", "2"]  # natural order, first two
    b = Auditor(tmp_path, spec, data, attack="dlg", clients=["3", 5])
    assert b.select(1, [5, 3, 4]) == ["3", "5"]
    with pytest.raises(ConfigError, match="nothing to audit"):
        Auditor(tmp_path, spec, data, attack=None)
    with pytest.raises(ConfigError, match="needs ground_truth"):
        Auditor(tmp_path, spec, data, attack=None, proxy=True)
    with pytest.raises(ConfigError, match="unknown attack 'dgl'"):
        Auditor(tmp_path, spec, data, attack="dgl")


def test_auditor_scores_stores_and_records_failures(tmp_path, setting):
    spec, data, images, labels = setting
    torch.manual_seed(0)
    model = build_model(spec)
    sent = [v.detach().numpy().copy() for v in model.state_dict().values()]
    returned = _plain_sgd(model, data, images[:1], labels[:1], steps=1, lr=0.01)
    observe = lambda: local_update_observation(spec, data, sent, returned, batch_size=1, local_steps=1,  # noqa: E731
                                               local_lr=0.01)
    truth = {"0": (images[:1], labels[:1]), "1": (images, labels)}
    seen = []

    def ground_truth(client, rnd):
        seen.append((client, rnd))
        return truth[client]

    a = Auditor(tmp_path, spec, data, attack="dlg", attack_options={"iterations": 30}, proxy=True,
                ground_truth=ground_truth, run="t")
    ok = a.audit(1, 0, observe, client_metrics={"dp_epsilon": 2.5})
    assert ok.status == "done", ok.error
    assert ok.psnr > 13 and ok.label_acc == 1.0 and ok.epsilon == 2.5  # a grey image scores 10-12 dB
    assert ok.update_norm == pytest.approx(math.sqrt(sum(float(((torch.as_tensor(s) - torch.as_tensor(r)) ** 2).sum())
                                                         for s, r in zip(sent, returned))), rel=1e-5)
    assert ok.metrics["proxy"]["mean"]["grad_norm"] > 0
    assert (tmp_path / ok.images_path).is_file() and (tmp_path / ok.observation_path).is_file()
    bad = a.audit(1, 1, observe)  # ground truth has 2 images, the client reported B = 1
    assert bad.status == "failed" and "batch size 1" in bad.error
    broken = a.audit(2, 0, lambda: (_ for _ in ()).throw(ObservationError("weights do not fit")))
    assert broken.status == "failed" and "weights do not fit" in broken.error
    assert seen == [("0", 1), ("1", 1)]
    with AuditStore(tmp_path) as store:
        rows = list(store.audits(run="t"))
        assert [(r.round, r.client, r.status) for r in rows] == [(1, "0", "done"), (1, "1", "failed"),
                                                                  (2, "0", "failed")]
        assert rows[0].psnr == ok.psnr and rows[0].metrics["scores"]["label_accuracy"] == 1.0
        assert store.add_audit(rows[0]) is False  # insert-once key


def test_audit_table_lives_next_to_the_sweep_cells(tmp_path):
    with ResultsStore(tmp_path) as store:
        assert store.add_cell(CellRow("c1", "done", "dlg", "none", 1, 0, 0, {}, psnr=20.0))
    with AuditStore(tmp_path) as store:
        assert [c.key for c in store.cells()] == ["c1"]
        assert list(store.audits()) == [] and store.audit_runs() == []
    with ResultsStore(tmp_path) as store:  # the plain store still opens a file that has the audit table
        assert store.count() == 1
