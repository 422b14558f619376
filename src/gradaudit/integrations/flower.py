"""Audit a Flower deployment from the server: :class:`AuditingStrategy` wraps any Flower strategy.

Flower (flwr >= 1.13, tested with 1.41; ``pip install 'gradaudit[integrations]'``) runs a round as
``configure_fit`` (the server sends each selected client its ``FitIns``: the weights theta_0 and a config) and
``aggregate_fit`` (the clients' ``FitRes``: their weights theta_K, ``num_examples`` and a metrics dict). The
wrapper records the weights each client was sent in ``configure_fit``; in ``aggregate_fit`` it first lets the
wrapped strategy aggregate (its inputs and result are passed through untouched, so training is identical with
and without the wrapper), then captures every selected client's update as an Observation

    update = theta_0 - theta_K   (FedAvg; :func:`gradaudit.integrations.audit.local_update_observation`)

and hands it to an :class:`~gradaudit.integrations.audit.Auditor` (attack and/or vulnerability proxy, scores
against an optional ``ground_truth`` hook, one row per client and round in the results store).

What the client must report in its fit metrics (the server cannot know them otherwise; names configurable
via :class:`MetricKeys`): ``local_steps`` (K), ``local_lr`` (lr) and ``batch_size`` (B; default:
``num_examples``), and, for a stable identity across rounds, ``client_id`` (default: Flower's ``cid``, which
is a random node id). A ``dp_epsilon`` metric (e.g. from Opacus' accountant) is stored with the row. K and lr
may instead be fixed for the whole deployment with ``local_steps=`` / ``local_lr=``. The attack models K
full-batch SGD steps on B samples, as :class:`gradaudit.threat.Client` does.

Works wherever the legacy ``flwr.server.strategy.Strategy`` API runs: the simulation engine
(``flwr.simulation.run_simulation`` with a ``ServerApp(server_fn=...)``, Ray backend) and a real server with
clients over gRPC (``flwr.server.start_server`` / ``flwr.client.start_client``, or a SuperLink running the same
ServerApp). The audit runs synchronously inside ``aggregate_fit`` in the server process, so it lengthens the
round by the attack's time; restrict it with ``clients=`` / ``rounds=``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

from ..errors import ConfigError
from ..models.registry import ModelSpec
from ..threat.observation import DataSpec
from .audit import AuditRow, Auditor, GroundTruth, ProxySettings, local_update_observation

try:
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy import Strategy
except ImportError as e:  # pragma: no cover - exercised only without flwr
    raise ImportError("gradaudit.integrations.flower needs Flower: pip install 'gradaudit[integrations]' "
                      f"(or 'flwr[simulation]>=1.13'); import failed with: {e}") from None

log = logging.getLogger("gradaudit.flower")


@dataclass(frozen=True)
class MetricKeys:
    """Names of the fit-metrics entries the clients report."""

    client_id: str = "client_id"
    local_steps: str = "local_steps"
    local_lr: str = "local_lr"
    batch_size: str = "batch_size"


class AuditingStrategy(Strategy):
    """A Flower strategy that audits every round's client updates and otherwise behaves as ``strategy``.

    Args:
        strategy: the wrapped strategy (FedAvg, FedProx, ... any ``flwr.server.strategy.Strategy``).
        model, data: the architecture the federation trains (:class:`~gradaudit.models.registry.ModelSpec`)
            and the clients' input normalisation (:class:`~gradaudit.threat.observation.DataSpec`).
        run_dir: folder of the results store (``results.sqlite``).
        attack, attack_options, proxy, clients, rounds, ground_truth, run, save_observations, seed, device:
            see :class:`~gradaudit.integrations.audit.Auditor`.
        local_steps, local_lr: K and lr for clients that do not report them.
        metric_keys: names of the clients' fit metrics (:class:`MetricKeys`).
    """

    def __init__(self, strategy: Strategy, *, model: ModelSpec, data: DataSpec, run_dir: str | Path,
                 attack: str | None = "inverting-gradients", attack_options: dict[str, Any] | None = None,
                 proxy: bool | ProxySettings = False, clients: int | Collection[Any] | None = None,
                 rounds: Collection[int] | None = None, ground_truth: GroundTruth | None = None,
                 local_steps: int | None = None, local_lr: float | None = None,
                 metric_keys: MetricKeys = MetricKeys(), run: str | None = None, save_observations: bool = True,
                 seed: int = 0, device: str = "cpu") -> None:
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"AuditingStrategy wraps a flwr.server.strategy.Strategy, got {type(strategy).__name__}")
        if local_steps is not None and local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1, got {local_steps}")
        if local_lr is not None and not local_lr > 0:
            raise ConfigError(f"local_lr must be > 0, got {local_lr}")
        self.strategy = strategy
        self.auditor = Auditor(run_dir, model, data, attack=attack, attack_options=attack_options, proxy=proxy,
                               clients=clients, rounds=rounds, ground_truth=ground_truth, run=run,
                               source="flower", save_observations=save_observations, seed=seed, device=device)
        self.local_steps, self.local_lr = local_steps, local_lr
        self.keys = metric_keys
        self._sent: dict[int, dict[str, Any]] = {}  # round -> cid -> Parameters sent in configure_fit
        self.rows: list[AuditRow] = []  # every row this strategy wrote, in order

    def __repr__(self) -> str:
        return f"AuditingStrategy({self.strategy!r}, attack={self.auditor.attack_name!r}, run={self.auditor.run!r})"

    @property
    def run(self) -> str:
        return self.auditor.run

    # ------------------------------------------------------------ pass-through (Flower calls these)
    def initialize_parameters(self, client_manager):
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        self._sent[server_round] = {proxy.cid: fit_ins.parameters for proxy, fit_ins in instructions}
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        aggregated = self.strategy.aggregate_fit(server_round, results, failures)
        try:
            self._audit_round(server_round, results)
        finally:
            self._sent.pop(server_round, None)
        return aggregated

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        return self.strategy.evaluate(server_round, parameters)

    # ------------------------------------------------------------------------------------ audit
    def client_id(self, proxy, fit_res) -> str:
        return str(fit_res.metrics.get(self.keys.client_id, proxy.cid))

    def _audit_round(self, server_round: int, results) -> None:
        by_id = {self.client_id(proxy, res): (proxy, res) for proxy, res in results}
        sent = self._sent.get(server_round, {})
        for client in self.auditor.select(server_round, list(by_id)):
            proxy, res = by_id[client]
            row = self.auditor.audit(server_round, client, lambda: self._observe(sent, proxy, res),
                                     client_metrics=dict(res.metrics))
            self.rows.append(row)
            if row.status == "failed":
                log.warning("gradaudit: audit of client %s, round %d failed: %s", client, server_round, row.error)
            else:
                log.info("gradaudit: round %d client %s: PSNR %s dB, update norm %.4g, %.1f s", server_round, client,
                         "-" if row.psnr is None else f"{row.psnr:.2f}", row.update_norm, row.seconds)

    def _observe(self, sent: dict[str, Any], proxy, res):
        if proxy.cid not in sent:
            raise ConfigError(f"no weights were recorded for client {proxy.cid} in configure_fit of this round")
        m = res.metrics
        steps = m.get(self.keys.local_steps, self.local_steps)
        lr = m.get(self.keys.local_lr, self.local_lr)
        if steps is None or lr is None:
            missing = [k for k, v in ((self.keys.local_steps, steps), (self.keys.local_lr, lr)) if v is None]
            raise ConfigError(f"the client reported no {' and '.join(missing)} in its fit metrics (and the strategy "
                              f"has no default): the attack needs the local steps K and learning rate lr")
        batch = m.get(self.keys.batch_size, res.num_examples)
        extras = {"flower": {"cid": proxy.cid, "num_examples": res.num_examples}}
        if "dp_epsilon" in m:
            extras["dp_epsilon"] = float(m["dp_epsilon"])
        defenses = [str(m["defense"])] if m.get("defense") else []
        return local_update_observation(
            self.auditor.spec, self.auditor.data, parameters_to_ndarrays(sent[proxy.cid]),
            parameters_to_ndarrays(res.parameters), batch_size=int(batch), local_steps=int(steps),
            local_lr=float(lr), model=self.auditor.model, defenses=defenses, extras=extras)
