"""Audit updates captured from a running federated system: weights -> Observation -> attack/proxy -> store.

Framework-free core of the integrations (:mod:`.flower` only translates Flower's messages into calls here).

Capture (FedAvg, methods.md section 1). The server broadcast theta_0 to a client, the client trained K local
steps at learning rate lr on its private batch of B samples and returned theta_K. What the server holds is

    update = theta_0 - theta_K,   with K, lr and B as the client reports them,

i.e. an :class:`~gradaudit.threat.Observation` with ``update_kind="local_update"``; the attacks treat it
exactly as an update of :class:`~gradaudit.threat.Client` in FedAvg mode (K full-batch steps). Weights travel
as a list of arrays; :func:`name_weights` maps them to the model's names, in ``state_dict()`` order (the usual
Flower/PyTorch convention: parameters and buffers) or in ``named_parameters()`` order.

Audit. :class:`Auditor` runs the configured attack on the Observation only, and the vulnerability proxy
(:func:`gradaudit.proxies.compute_proxies`, which by definition needs the private images) when asked. The
private batch, when the experimenter knows it, comes from an optional ``ground_truth(client_id, round)``
callable and is used *only* to score (PSNR, SSIM, MSE, label accuracy) and for the proxy: the attack never
sees it. The private labels are not granted to the attack (a real server does not have them); it recovers
them from the update.

Storage. One row per (run, round, client) in the ``audit`` table of the sweep's results store
(``results.sqlite``, :class:`AuditStore`, a :class:`~gradaudit.evaluation.store.ResultsStore` with one more
table), written in one transaction after its images file (``audit/<key>.safetensors``: ``truth`` and the
aligned ``reconstruction``, as the sweep's cell files) and, optionally, the captured Observation
(``audit/<key>-observation.{safetensors,json}``, re-attackable with ``gradaudit attack --observation``).
An audit that fails (bad weights, missing lr, attack error) is stored as a ``failed`` row with its error; it
never stops the federated run.
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..evaluation.store import ResultsStore, _now
from ..models.registry import ModelSpec, build_model
from ..threat.capture import local_update_observation, name_weights  # noqa: F401 - re-exported
from ..evaluation.records import json_ready
from ..threat.observation import DataSpec, Observation
from ..checks import finite_or_none

#: ``ground_truth(client_id, round) -> (images [B, C, H, W] in [0, 1], labels [B])``, or None when unknown.
GroundTruth = Callable[[str, int], Optional[tuple[torch.Tensor, torch.Tensor]]]
AUDIT_DIR = "audit"

_AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    key TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    source TEXT NOT NULL,
    round INTEGER NOT NULL,
    client TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    attack TEXT NOT NULL,
    batch_size INTEGER, local_steps INTEGER, local_lr REAL,
    psnr REAL, ssim REAL, mse REAL, label_acc REAL, update_norm REAL, epsilon REAL,
    seconds REAL,
    error TEXT,
    images_path TEXT,
    observation_path TEXT,
    config_json TEXT NOT NULL,
    metrics_json TEXT,
    finished_at TEXT NOT NULL
);
"""
_COLUMNS = ("key", "run", "source", "round", "client", "status", "attack", "batch_size", "local_steps",
            "local_lr", "psnr", "ssim", "mse", "label_acc", "update_norm", "epsilon", "seconds", "error",
            "images_path", "observation_path")


@dataclass
class AuditRow:
    """One audited client update of one round.

    ``epsilon``: the DP guarantee the client reported for this update (fit metric ``dp_epsilon``), if any.
    ``metrics``: everything else: per-image scores, the proxy table, the attack's record, the client's metrics.
    """

    key: str
    run: str
    source: str
    round: int
    client: str
    status: str
    attack: str
    config: dict[str, Any]
    batch_size: Optional[int] = None
    local_steps: Optional[int] = None
    local_lr: Optional[float] = None
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    mse: Optional[float] = None
    label_acc: Optional[float] = None
    update_norm: Optional[float] = None
    epsilon: Optional[float] = None
    seconds: Optional[float] = None
    error: Optional[str] = None
    images_path: Optional[str] = None
    observation_path: Optional[str] = None
    metrics: dict[str, Any] = field(default_factory=dict)


class AuditStore(ResultsStore):
    """The sweep's results store (same file, same transactions) with the ``audit`` table of captured updates."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(run_dir)
        self._conn.executescript(_AUDIT_SCHEMA)

    def add_audit(self, row: AuditRow) -> bool:
        """Insert one audited update in one transaction; False (nothing written) if its key exists."""
        values = [getattr(row, c) for c in _COLUMNS]
        values += [json.dumps(json_ready(row.config), sort_keys=True), json.dumps(json_ready(row.metrics)), _now()]
        with self._transaction():
            cur = self._conn.execute(
                f"INSERT OR IGNORE INTO audit ({', '.join(_COLUMNS)}, config_json, metrics_json, finished_at) "
                f"VALUES ({', '.join('?' * (len(_COLUMNS) + 3))})", values)
        return cur.rowcount == 1

    def audits(self, run: str | None = None, status: str | None = None) -> Iterator[AuditRow]:
        """Stored audit rows in insertion order (one run's, or all)."""
        where, args = [], []
        if run is not None:
            where.append("run = ?")
            args.append(run)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        q = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY rowid"
        cur = self._conn.execute(q, args)
        names = [d[0] for d in cur.description]
        for values in cur:
            r = dict(zip(names, values))
            yield AuditRow(**{c: r[c] for c in _COLUMNS}, config=json.loads(r["config_json"]),
                           metrics=json.loads(r["metrics_json"]) if r["metrics_json"] else {})

    def audit_runs(self) -> list[str]:
        """Run names in the order they were first written."""
        return [r for (r,) in self._conn.execute("SELECT run FROM audit GROUP BY run ORDER BY MIN(rowid)")]


# ------------------------------------------------------------------------------------------- capture
# ------------------------------------------------------------------------------------------------ audit
@dataclass(frozen=True)
class ProxySettings:
    """How :func:`gradaudit.proxies.compute_proxies` is run on an audited client's private batch."""

    which: tuple[str, ...] = ("max",)
    losses: tuple[str, ...] = ("l2", "cosine")
    method: str = "lanczos"
    maxiter: int = 30
    tol: float = 1e-3


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe(text: str) -> str:
    return _SAFE.sub("_", str(text))[:80] or "_"


class Auditor:
    """Attack and/or probe captured client updates and store the results (see the module docstring).

    Args:
        run_dir: folder of the results store (``results.sqlite``); created if needed.
        spec, data: the architecture the server trains and the input normalisation its clients use.
        attack: attack name (:func:`gradaudit.attacks.registry.build_attack`), or None for no attack.
        attack_options: the attack's hyper-parameter overrides (e.g. ``{"iterations": 200}``).
        proxy: also compute the vulnerability proxies (needs ``ground_truth``); True, or a :class:`ProxySettings`.
        clients: which clients to audit: None (all), an int N (the first N client ids of each round in sorted
            order), or a collection of client ids (compared as strings).
        rounds: which rounds to audit (None: all).
        ground_truth: ``(client_id, round) -> (images, labels)`` or None; used for scores and proxies only.
        run: name of this run in the store (default: ``<source>-<timestamp>``); keys are ``run/rR/cID``.
        save_observations: also write each captured Observation next to the store.
        seed, device: of the attack.
    """

    def __init__(self, run_dir: str | Path, spec: ModelSpec, data: DataSpec, *,
                 attack: str | None = "inverting-gradients", attack_options: dict[str, Any] | None = None,
                 proxy: bool | ProxySettings = False, clients: int | Collection[Any] | None = None,
                 rounds: Collection[int] | None = None, ground_truth: GroundTruth | None = None,
                 run: str | None = None, source: str = "capture", save_observations: bool = True,
                 seed: int = 0, device: str = "cpu") -> None:
        from ..attacks.registry import build_attack

        if attack is None and not proxy:
            raise ConfigError("nothing to audit: give an attack, or proxy=True (or both)")
        if proxy and ground_truth is None:
            raise ConfigError("the vulnerability proxy is computed on the private images: it needs ground_truth")
        if isinstance(clients, bool) or (isinstance(clients, int) and clients < 1):
            raise ConfigError(f"clients must be None, a positive count or a collection of client ids, got {clients!r}")
        if rounds is not None and any(int(r) < 1 for r in rounds):
            raise ConfigError(f"rounds are numbered from 1, got {sorted(rounds)}")
        if ground_truth is not None and not callable(ground_truth):
            raise ConfigError("ground_truth must be a callable (client_id, round) -> (images, labels)")
        self.spec, self.data = spec, data
        self.model = build_model(spec)  # fail early on a bad model; also names the weights
        self.attack_name = attack
        self.attack_options = dict(attack_options or {})
        self.attack = None if attack is None else build_attack(attack, device=device, seed=seed,
                                                                 **self.attack_options)
        self.proxy = ProxySettings() if proxy is True else (proxy or None)
        self.clients = clients if isinstance(clients, int) or clients is None else {str(c) for c in clients}
        self.rounds = None if rounds is None else {int(r) for r in rounds}
        self.ground_truth = ground_truth
        self.source = source
        self.run = run or f"{source}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self.save_observations = save_observations
        self.seed, self.device = seed, device
        self.run_dir = Path(run_dir)
        with AuditStore(self.run_dir):  # create the store (and the audit table) now: fail before training
            pass

    # ------------------------------------------------------------------ selection
    def select(self, server_round: int, client_ids: Sequence[Any]) -> list[str]:
        """The client ids of this round that are audited (sorted)."""
        if self.rounds is not None and server_round not in self.rounds:
            return []
        ids = sorted({str(c) for c in client_ids}, key=_natural)
        if self.clients is None:
            return ids
        if isinstance(self.clients, int):
            return ids[: self.clients]
        return [c for c in ids if c in self.clients]

    def key(self, server_round: int, client: str) -> str:
        return f"{_safe(self.run)}/r{server_round}/c{_safe(client)}"

    def config(self) -> dict[str, Any]:
        return {"model": self.spec.to_dict(), "data": self.data.to_dict(), "attack": self.attack_name,
                "attack_options": self.attack_options,
                "proxy": None if self.proxy is None else self.proxy.__dict__, "seed": self.seed,
                "device": self.device, "source": self.source}

    # ---------------------------------------------------------------------- audit
    def audit(self, server_round: int, client: Any, observe: Callable[[], Observation],
              client_metrics: dict[str, Any] | None = None) -> AuditRow:
        """Build the Observation (``observe()``), attack/probe/score it, store and return the row.

        Never raises for an error of the audit itself: such errors become a ``failed`` row.
        """
        client = str(client)
        key = self.key(server_round, client)
        t0 = time.perf_counter()
        row = AuditRow(key=key, run=self.run, source=self.source, round=int(server_round), client=client,
                       status="failed", attack=self.attack_name or "none", config=self.config(),
                       metrics={"client_metrics": dict(client_metrics or {})})
        row.epsilon = finite_or_none((client_metrics or {}).get("dp_epsilon"))
        try:
            obs = observe()
            row.batch_size, row.local_steps, row.local_lr = obs.batch_size, obs.local_steps, obs.local_lr
            row.update_norm = float(torch.sqrt(sum(u.double().pow(2).sum() for u in obs.update.values())))
            if row.epsilon is None:
                row.epsilon = finite_or_none(obs.extras.get("dp_epsilon"))
            self._audit(row, obs, server_round, client)
            row.status = "done"
        except Exception as e:  # noqa: BLE001 - an audit error is data, it never stops the federated run
            row.error = f"{type(e).__name__}: {e}"
            row.metrics["traceback"] = traceback.format_exc()
        row.seconds = time.perf_counter() - t0
        with AuditStore(self.run_dir) as store:
            store.add_audit(row)
        return row

    def _audit(self, row: AuditRow, obs: Observation, server_round: int, client: str) -> None:
        from ..metrics import score_reconstruction
        from ..evaluation.records import reconstruction_record

        truth = self.ground_truth(client, server_round) if self.ground_truth is not None else None
        images = labels = None
        if truth is not None:
            images, labels = (torch.as_tensor(t) for t in truth)
            images, labels = images.float(), labels.long().view(-1)
            if images.dim() != 4 or images.shape[0] != obs.batch_size or labels.numel() != obs.batch_size:
                raise ConfigError(f"ground truth of client {client}, round {server_round} has images "
                                  f"{list(images.shape)} and {labels.numel()} labels, but the client reported "
                                  f"batch size {obs.batch_size}")
        if self.save_observations:
            base = self.run_dir / AUDIT_DIR / f"{row.key.replace('/', '_')}-observation"
            obs.save(base)
            row.observation_path = str(base.relative_to(self.run_dir)) + ".json"
        if self.attack is not None:
            rec = self.attack.reconstruct(obs)
            row.metrics["reconstruction"] = reconstruction_record(rec)
            if images is not None:
                scores = score_reconstruction(rec.images, images, true_labels=labels, predicted_labels=rec.labels)
                row.psnr, row.ssim = finite_or_none(scores.mean_psnr), finite_or_none(scores.mean_ssim)
                row.mse, row.label_acc = finite_or_none(scores.mean_mse), finite_or_none(scores.label_accuracy)
                row.metrics["scores"] = scores.to_dict()
                aligned = rec.images[torch.as_tensor(scores.assignment)]
                row.images_path = self._write_images(row.key, images, aligned, labels)
        if self.proxy is not None and images is not None:
            from ..proxies import compute_proxies

            p = self.proxy
            table = compute_proxies(obs, images, labels, which=p.which, losses=p.losses, method=p.method,
                                    maxiter=p.maxiter, tol=p.tol, seed=self.seed, device=self.device)
            summary = {c: float(np.nanmean(table.column(c))) for c in table.proxies}
            row.metrics["proxy"] = {"mean": summary, "max": {c: float(np.nanmax(table.column(c)))
                                                             for c in table.proxies},
                                    "per_sample": table.to_dicts(), "settings": dict(p.__dict__)}

    def _write_images(self, key: str, truth: torch.Tensor, rec: torch.Tensor, true_labels: torch.Tensor) -> str:
        """Atomically write ``truth`` and the aligned ``reconstruction`` (the sweep's cell-file layout)."""
        from safetensors.torch import save_file

        rel = f"{AUDIT_DIR}/{key.replace('/', '_')}.safetensors"
        final = self.run_dir / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"truth": truth.detach().float().cpu().contiguous(),
                   "reconstruction": rec.detach().float().cpu().clamp(0, 1).contiguous(),
                   "true_labels": true_labels.detach().long().cpu().contiguous()}
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata={"key": key})
        os.replace(tmp, final)
        return rel


def _natural(text: str) -> tuple:
    """Sort key: client '2' before '10'."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))
