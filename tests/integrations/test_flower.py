"""AuditingStrategy: a Flower round passes through unchanged, every client update is audited and stored."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

flwr = pytest.importorskip("flwr", reason="Flower not installed (pip install 'gradaudit[integrations]')")

from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server.client_manager import SimpleClientManager  # noqa: E402
from flwr.server.client_proxy import ClientProxy  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402

from gradaudit.errors import ConfigError  # noqa: E402
from gradaudit.integrations.audit import AuditStore  # noqa: E402
from gradaudit.integrations.flower import AuditingStrategy  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flower_audit" / "app.py"


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("flower_audit_app", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["flower_audit_app"] = module
    spec.loader.exec_module(module)
    return module


class _Proxy(ClientProxy):
    """A connected client as the server's ClientManager sees it (calls are made by the test, not Flower)."""

    def get_properties(self, *a, **k): raise NotImplementedError  # noqa: E704
    def get_parameters(self, *a, **k): raise NotImplementedError  # noqa: E704
    def fit(self, *a, **k): raise NotImplementedError  # noqa: E704
    def evaluate(self, *a, **k): raise NotImplementedError  # noqa: E704
    def reconnect(self, *a, **k): raise NotImplementedError  # noqa: E704


def _one_round(app, s, strategy, drop_metric=None):
    """configure_fit -> the example's clients fit -> aggregate_fit, as Flower's server loop does."""
    manager = SimpleClientManager()
    proxies = [_Proxy(cid=f"node-{i}") for i in range(s.clients)]
    for p in proxies:
        manager.register(p)
    params = strategy.initialize_parameters(manager)
    instructions = strategy.configure_fit(1, params, manager)
    results = []
    for proxy, ins in instructions:
        client = app.make_client(int(proxy.cid.split("-")[1]), s)
        weights, n, metrics = client.fit(parameters_to_ndarrays(ins.parameters), ins.config)
        if drop_metric:
            metrics.pop(drop_metric)
        results.append((proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), n, metrics)))
    return strategy.aggregate_fit(1, results, [])


def test_round_passes_through_unchanged_and_is_audited(app, tmp_path, single_thread):
    s = app.Settings(iterations=30, batch_size=1)
    plain_params, plain_metrics = _one_round(app, s, app.make_strategy(s, tmp_path).strategy)  # bare FedAvg
    audited = app.make_strategy(s, tmp_path, run="r")
    assert isinstance(audited.strategy, FedAvg)
    params, metrics = _one_round(app, s, audited)
    a, b = parameters_to_ndarrays(params), parameters_to_ndarrays(plain_params)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert metrics == plain_metrics
    with AuditStore(tmp_path) as store:
        rows = list(store.audits(run="r"))
    assert [(r.round, r.client, r.status) for r in rows] == [(1, "0", "done"), (1, "1", "done")]
    assert all(r.local_steps == s.local_steps and r.local_lr == s.local_lr and r.batch_size == 1 for r in rows)
    # DLG rebuilds the clients' LeNet images (a grey image scores 10-12 dB): an attack that broke would fail here
    assert all(r.psnr is not None and r.psnr > 13 and r.update_norm > 0 for r in rows), [r.psnr for r in rows]
    assert all(r.metrics["proxy"]["mean"]["cosine_max"] > 0 for r in rows)
    assert [x.key for x in audited.rows] == [r.key for r in rows]


def test_missing_lr_is_a_failed_audit_not_a_failed_round(app, tmp_path, single_thread):
    s = app.Settings(iterations=1, proxy=False)
    strategy = app.make_strategy(s, tmp_path, run="nolr")
    params, _ = _one_round(app, s, strategy, drop_metric="local_lr")
    assert params is not None
    assert {r.status for r in strategy.rows} == {"failed"}
    assert "no local_lr" in strategy.rows[0].error
    with pytest.raises(ConfigError, match="wraps a flwr.server.strategy.Strategy"):
        AuditingStrategy(object(), model=None, data=None, run_dir=tmp_path)


def test_loopback_grpc_example_produces_leakage_table_and_report(app, tmp_path, capsys):
    """The example end to end: a real Flower server on 127.0.0.1, 2 client processes, 2 rounds."""
    code = app.main(["loopback", "--out", str(tmp_path), "--run", "loop", "--iterations", "2",
                     "--proxy", "false"])
    out = capsys.readouterr().out
    assert code == 0, out
    with AuditStore(tmp_path) as store:
        rows = list(store.audits(run="loop"))
    assert sorted((r.round, r.client) for r in rows) == [(1, "0"), (1, "1"), (2, "0"), (2, "1")]
    assert all(r.status == "done" and r.psnr is not None for r in rows)
    # round 2 starts from the FedAvg of round 1, so its broadcast weights differ from round 1's
    obs_files = sorted((tmp_path / "audit").glob("*-observation.safetensors"))
    assert len(obs_files) == 4
    from gradaudit.threat.observation import Observation

    r1, r2 = Observation.load(obs_files[0]), Observation.load(obs_files[2])
    assert "r1" in obs_files[0].name and "r2" in obs_files[2].name
    assert not all(np.array_equal(r1.parameters[k], r2.parameters[k]) for k in r1.parameters)
    assert "| round | client |" in out and "most exposed client" in out
    html = (tmp_path / "audit-report.html").read_text()
    assert html.count("<img ") == 4 and "round 2, client 1" in html
    assert (tmp_path / "audit-report" / "leakage.csv").read_text().count("\n") == 5


class _Grid:
    """The two calls FedAvg's configure_train makes on a Grid."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def _message_round(app, s, strategy, monkeypatch):
    """configure_train -> the example's Message-API clients -> aggregate_train, as strategy.start does."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    nodes = {101: 0, 202: 1}  # Flower node id -> partition
    messages = list(strategy.configure_train(1, ArrayRecord(app.initial_weights(s)), ConfigRecord(), _Grid(nodes)))
    replies = []
    for msg in messages:
        monkeypatch.setattr(TaskIdentity, "_node_id", msg.metadata.dst_node_id)  # the client node replies
        replies.append(app.message_train(msg, nodes[msg.metadata.dst_node_id], s))
    return strategy.aggregate_train(1, iter(replies))  # a one-shot iterable, as the Grid may hand over


def test_message_api_round_passes_through_and_is_audited(app, tmp_path, monkeypatch, single_thread):
    s = app.Settings(iterations=2, proxy=False)
    plain_arrays, plain_metrics = _message_round(app, s, app.make_message_strategy(s, tmp_path).strategy,
                                                 monkeypatch)
    audited = app.make_message_strategy(s, tmp_path, run="msg")
    arrays, metrics = _message_round(app, s, audited, monkeypatch)
    a, b = arrays.to_numpy_ndarrays(), plain_arrays.to_numpy_ndarrays()
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert dict(metrics) == dict(plain_metrics)
    assert [(r.client, r.status, r.batch_size, r.local_steps) for r in audited.rows] == [
        ("0", "done", 1, s.local_steps), ("1", "done", 1, s.local_steps)]
    # the same update as the legacy API captures for the same client and round
    legacy = app.make_strategy(s, tmp_path / "legacy", run="leg")
    _one_round(app, s, legacy)
    assert [r.update_norm for r in audited.rows] == pytest.approx([r.update_norm for r in legacy.rows], rel=1e-6)
    with pytest.raises(ConfigError, match="use AuditingMessageStrategy"):
        AuditingStrategy(audited.strategy, model=None, data=None, run_dir=tmp_path)
