"""Audit a Flower deployment from the server: wrappers around any Flower strategy.

Flower (tested with flwr 1.41; ``pip install 'gradaudit[integrations]'``) runs a training round in two steps:
the strategy configures it (the server sends each selected client the weights theta_0 and a config) and
aggregates the replies (each client's weights theta_K, its number of examples and a metrics dict). A wrapper
records the weights each client was sent; when the replies arrive it first lets the wrapped strategy
aggregate (inputs and result passed through untouched, so training is identical with and without the
wrapper), then captures every selected client's update as an Observation

    update = theta_0 - theta_K   (FedAvg; :func:`gradaudit.threat.capture.local_update_observation`)

and hands it to an :class:`~gradaudit.integrations.audit.Auditor` (attack and/or vulnerability proxy, scores
against an optional ``ground_truth`` hook, one row per client and round in the results store).

Two Flower APIs:

* :class:`AuditingStrategy` wraps a ``flwr.server.strategy.Strategy`` (``configure_fit`` / ``aggregate_fit``;
  weights as ``Parameters``, client metrics in ``FitRes.metrics``). It runs under the simulation engine
  (``run_simulation`` with ``ServerApp(server_fn=...)``, Ray backend) and on a real server with clients over
  gRPC (``flwr.server.start_server`` / ``flwr.client.start_client``).
* :class:`AuditingMessageStrategy` wraps a Message-API ``flwr.serverapp.strategy.Strategy``
  (``configure_train`` / ``aggregate_train``, used by ``@app.main()`` ServerApps; weights as an
  ``ArrayRecord``, client metrics in a ``MetricRecord``, where Flower's own key for B is ``num-examples``).

What the client must report in its metrics (the server cannot know them otherwise; names configurable via
:class:`MetricKeys`): ``local_steps`` (K), ``local_lr`` (lr), ``batch_size`` (B; default: the number of
examples the client reports to Flower) and, for a stable identity across rounds, ``client_id`` (default:
Flower's node id, which is random). A ``dp_epsilon`` metric (e.g. from Opacus' accountant) and a ``defense``
string are stored with the row. K and lr may instead be fixed for the deployment with ``local_steps=`` /
``local_lr=``. The attack models K full-batch SGD steps on B samples, as :class:`gradaudit.threat.Client`.

The audit runs synchronously in the server process while the round is aggregated, so it lengthens the round
by the attack's time; restrict it with ``clients=`` / ``rounds=``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

from ..errors import ConfigError
from ..models.registry import ModelSpec
from ..threat.observation import DataSpec, Observation
from .audit import AuditRow, Auditor, GroundTruth, ProxySettings, local_update_observation

try:
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy import Strategy
    from flwr.serverapp.strategy import Strategy as MessageStrategy
except ImportError as e:  # pragma: no cover - exercised only without flwr
    raise ImportError("gradaudit.integrations.flower needs Flower: pip install 'gradaudit[integrations]' "
                      f"(or 'flwr[simulation]>=1.41'); import failed with: {e}") from None

log = logging.getLogger("gradaudit.flower")


@dataclass(frozen=True)
class MetricKeys:
    """Names of the metrics entries the clients report."""

    client_id: str = "client_id"
    local_steps: str = "local_steps"
    local_lr: str = "local_lr"
    batch_size: str = "batch_size"


@dataclass
class ClientReply:
    """One client's reply in framework-neutral form: what the capture needs."""

    node: str                       # Flower's id of the client (cid / node id)
    sent: Callable[[], list]        # theta_0 it was sent, as arrays (decoded lazily)
    returned: Callable[[], list]    # theta_K it returned
    num_examples: int
    metrics: dict[str, Any]


class _Capture:
    """The part both wrappers share: settings, the Auditor, and reply -> Observation -> stored row."""

    def __init__(self, *, model: ModelSpec, data: DataSpec, run_dir: str | Path, attack: str | None,
                 attack_options: dict[str, Any] | None, proxy: bool | ProxySettings,
                 clients: int | Collection[Any] | None, rounds: Collection[int] | None,
                 ground_truth: GroundTruth | None, local_steps: int | None, local_lr: float | None,
                 metric_keys: MetricKeys, run: str | None, save_observations: bool, seed: int, device: str) -> None:
        if local_steps is not None and local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1, got {local_steps}")
        if local_lr is not None and not (math.isfinite(local_lr) and local_lr > 0):
            raise ConfigError(f"local_lr must be a finite number > 0, got {local_lr}")
        self.auditor = Auditor(run_dir, model, data, attack=attack, attack_options=attack_options, proxy=proxy,
                               clients=clients, rounds=rounds, ground_truth=ground_truth, run=run,
                               source="flower", save_observations=save_observations, seed=seed, device=device)
        self.local_steps, self.local_lr = local_steps, local_lr
        self.keys = metric_keys
        self.rows: list[AuditRow] = []  # every row written, in order

    def audit_round(self, server_round: int, replies: list[ClientReply]) -> None:
        by_id = {str(r.metrics.get(self.keys.client_id, r.node)): r for r in replies}
        for client in self.auditor.select(server_round, list(by_id)):
            reply = by_id[client]
            row = self.auditor.audit(server_round, client, lambda: self.observe(reply),
                                     client_metrics=dict(reply.metrics))
            self.rows.append(row)
            if row.status == "failed":
                log.warning("gradaudit: audit of client %s, round %d failed: %s", client, server_round, row.error)
            else:
                log.info("gradaudit: round %d client %s: PSNR %s dB, update norm %.4g, %.1f s", server_round,
                         client, "-" if row.psnr is None else f"{row.psnr:.2f}", row.update_norm, row.seconds)

    def observe(self, reply: ClientReply) -> Observation:
        m = reply.metrics
        steps = m.get(self.keys.local_steps, self.local_steps)
        lr = m.get(self.keys.local_lr, self.local_lr)
        if steps is None or lr is None:
            missing = [k for k, v in ((self.keys.local_steps, steps), (self.keys.local_lr, lr)) if v is None]
            raise ConfigError(f"the client reported no {' and '.join(missing)} in its metrics (and the strategy "
                              f"has no default): the attack needs the local steps K and learning rate lr")
        batch = m.get(self.keys.batch_size, reply.num_examples)
        extras: dict[str, Any] = {"flower": {"node": reply.node, "num_examples": reply.num_examples}}
        if "dp_epsilon" in m:
            extras["dp_epsilon"] = float(m["dp_epsilon"])
        defenses = [str(m["defense"])] if m.get("defense") else []
        return local_update_observation(
            self.auditor.spec, self.auditor.data, reply.sent(), reply.returned(), batch_size=int(batch),
            local_steps=int(steps), local_lr=float(lr), model=self.auditor.model, defenses=defenses, extras=extras)


_DOC_ARGS = """
    Args:
        strategy: the wrapped strategy.
        model, data: the architecture the federation trains (:class:`~gradaudit.models.registry.ModelSpec`)
            and the clients' input normalisation (:class:`~gradaudit.threat.observation.DataSpec`).
        run_dir: folder of the results store (``results.sqlite``).
        attack, attack_options, proxy, clients, rounds, ground_truth, run, save_observations, seed, device:
            see :class:`~gradaudit.integrations.audit.Auditor`.
        local_steps, local_lr: K and lr for clients that do not report them.
        metric_keys: names of the clients' metrics (:class:`MetricKeys`).
"""


class _AuditingWrapper:
    """What both wrappers share: the constructor (one signature), the capture, and the audit rows."""

    def _check(self, strategy: Any) -> None:  # each wrapper checks the kind of strategy it wraps
        raise NotImplementedError

    def __init__(self, strategy: Any, *, model: ModelSpec, data: DataSpec, run_dir: str | Path,
                 attack: str | None = "inverting-gradients", attack_options: dict[str, Any] | None = None,
                 proxy: bool | ProxySettings = False, clients: int | Collection[Any] | None = None,
                 rounds: Collection[int] | None = None, ground_truth: GroundTruth | None = None,
                 local_steps: int | None = None, local_lr: float | None = None,
                 metric_keys: MetricKeys = MetricKeys(), run: str | None = None, save_observations: bool = True,
                 seed: int = 0, device: str = "cpu") -> None:
        self._check(strategy)
        self.strategy = strategy
        self.capture = _Capture(model=model, data=data, run_dir=run_dir, attack=attack, attack_options=attack_options,
                                proxy=proxy, clients=clients, rounds=rounds, ground_truth=ground_truth,
                                local_steps=local_steps, local_lr=local_lr, metric_keys=metric_keys, run=run,
                                save_observations=save_observations, seed=seed, device=device)
        self._sent: dict[int, dict[Any, Any]] = {}  # round -> client -> what the server sent it

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.strategy!r}, run={self.run!r})"

    @property
    def run(self) -> str:
        return self.capture.auditor.run

    @property
    def rows(self) -> list[AuditRow]:
        return self.capture.rows


class AuditingStrategy(_AuditingWrapper, Strategy):
    __doc__ = ("A ``flwr.server.strategy.Strategy`` that audits every round's client updates and otherwise "
               "behaves as ``strategy`` (FedAvg, FedProx, ...).\n" + _DOC_ARGS)

    def _check(self, strategy: Any) -> None:
        if not isinstance(strategy, Strategy):
            hint = (" (a Message-API strategy: use AuditingMessageStrategy)"
                    if isinstance(strategy, MessageStrategy) else "")
            raise ConfigError(f"AuditingStrategy wraps a flwr.server.strategy.Strategy, got "
                              f"{type(strategy).__name__}{hint}")

    def initialize_parameters(self, client_manager):
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        self._sent[server_round] = {proxy.cid: fit_ins.parameters for proxy, fit_ins in instructions}
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        aggregated = self.strategy.aggregate_fit(server_round, results, failures)
        sent = self._sent.pop(server_round, {})
        self.capture.audit_round(server_round, [
            ClientReply(node=str(proxy.cid), sent=_lookup(sent, proxy.cid, parameters_to_ndarrays),
                        returned=lambda p=res.parameters: parameters_to_ndarrays(p), num_examples=res.num_examples,
                        metrics=dict(res.metrics)) for proxy, res in results])
        return aggregated

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        return self.strategy.evaluate(server_round, parameters)


class AuditingMessageStrategy(_AuditingWrapper, MessageStrategy):
    __doc__ = ("A Message-API ``flwr.serverapp.strategy.Strategy`` that audits every round's client updates and "
               "otherwise behaves as ``strategy``; use it where the wrapped strategy was used "
               "(``strategy.start(grid=grid, initial_arrays=..., num_rounds=...)`` in a ``@app.main()`` ServerApp)."
               "\n" + _DOC_ARGS)

    def _check(self, strategy: Any) -> None:
        if not isinstance(strategy, MessageStrategy):
            raise ConfigError(f"AuditingMessageStrategy wraps a flwr.serverapp.strategy.Strategy, got "
                              f"{type(strategy).__name__}")

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sent[server_round] = {m.metadata.dst_node_id: m.content for m in messages}
        return messages

    def aggregate_train(self, server_round, replies):
        replies = list(replies)  # may be a one-shot iterable: the wrapped strategy and the audit both read it
        aggregated = self.strategy.aggregate_train(server_round, replies)
        sent = self._sent.pop(server_round, {})
        ok = [m for m in replies if not m.has_error() and m.has_content()]
        self.capture.audit_round(server_round, [
            ClientReply(node=str(m.metadata.src_node_id), sent=_lookup(sent, m.metadata.src_node_id, _arrays),
                        returned=lambda c=m.content: _arrays(c), num_examples=int(_metrics(m.content).get(
                            "num-examples", 0) or 0), metrics=_metrics(m.content)) for m in ok])
        return aggregated

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.strategy.aggregate_evaluate(server_round, replies)


def _lookup(sent: dict, key: Any, decode: Callable[[Any], list]) -> Callable[[], list]:
    def get() -> list:
        if key not in sent:
            raise ConfigError(f"no weights were recorded for client {key} when this round was configured")
        return decode(sent[key])
    return get


def _arrays(content) -> list:
    """The weights in a Message's RecordDict (its single ArrayRecord) as a list of numpy arrays."""
    records = list(content.array_records.values())
    if len(records) != 1:
        raise ConfigError(f"expected one ArrayRecord in the message, found {len(records)}")
    return records[0].to_numpy_ndarrays()


def _metrics(content) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for record in content.metric_records.values():
        out.update(dict(record))
    return out
