"""Threat models named by what the server knows and controls.

After the systematisation of gradient inversion attacks in federated learning (SoK, USENIX Security 2025),
a threat model is the answer to five questions, each a field of :class:`ThreatModel`:

* **server**: ``honest`` (honest-but-curious: it sends the model the federation trains and only looks at what
  it receives) or ``malicious`` (it sends a model it changed for the attack: an imprint block, trap weights, a
  fished classifier, a wide head). A model is malicious when its registration says so
  (``@register_model(name, malicious=True)``).
* **labels**: does the server know the private labels (``known``), or must the attack recover them?
* **bn_statistics**: does it know the private batch's batch-norm statistics (``known`` / ``unknown``;
  ``n/a`` for a model without batch norm)?
* **aggregation**: one client's update (``single client``) or a secure aggregate of N clients' updates.
* **update**: FedSGD (one mean gradient) or FedAvg (local SGD: epochs E, minibatches of b).

The attacker's **prior** (none, public data, a pretrained generator) belongs to the attack, not to the
update: each attack declares it with what it needs (:class:`AttackThreat`), and :func:`applies` says
whether an attack can run on an observation's threat model, with the reason when it cannot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional

Server = Literal["honest", "malicious"]
Prior = Literal["none", "public data", "generator"]


@dataclass(frozen=True)
class ThreatModel:
    """What the server knows and controls for one observed update (see the module docstring)."""

    server: Server = "honest"
    labels: bool = False
    bn_statistics: Literal["known", "unknown", "n/a"] = "n/a"
    clients: int = 1
    update: str = "FedSGD"

    @property
    def aggregation(self) -> str:
        return "single client" if self.clients == 1 else f"secure aggregate of {self.clients} clients"

    def label(self) -> str:
        """One line, e.g. ``honest server, labels known, single client, FedSGD``."""
        parts = [f"{self.server} server", f"labels {'known' if self.labels else 'unknown'}"]
        if self.bn_statistics != "n/a":
            parts.append(f"BN statistics {self.bn_statistics}")
        parts += [self.aggregation, self.update]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["aggregation"] = self.aggregation
        d["label"] = self.label()
        return d


@dataclass(frozen=True)
class AttackThreat:
    """The threat model an attack needs, declared on the attack class (``threat = AttackThreat(...)``).

    Attributes:
        server: ``honest``: works on any model the server sends; ``malicious``: needs one of ``models``.
        models: the server-sent models it needs (registry names); empty = any.
        labels: ``uses``: uses the labels if known, recovers them otherwise; ``ignores``: does not need them.
        prior: what the attacker brings besides the observation.
        max_batch: the largest batch it reconstructs (None: any), e.g. 1 for a closed form that needs B=1.
        aggregate: can it attack a secure aggregate (it reconstructs the union of the clients' batches)?
        note: one line on what the attack reads from the update.
    """

    server: Server = "honest"
    models: tuple[str, ...] = ()
    labels: Literal["uses", "ignores"] = "uses"
    prior: Prior = "none"
    max_batch: Optional[int] = None
    aggregate: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def applies(attack: AttackThreat, threat: ThreatModel, model: str, batch_size: int) -> tuple[bool, str]:
    """Can an attack with needs ``attack`` run on an update observed under ``threat`` (server-sent ``model``,
    ``batch_size`` samples in all)? Returns (True, "") or (False, the reason in one line)."""
    if attack.models and model not in attack.models:
        kind = " (a malicious model)" if attack.server == "malicious" else ""
        return False, f"needs the server to send {' or '.join(attack.models)}{kind}, got '{model}'"
    if attack.max_batch is not None and batch_size > attack.max_batch:
        return False, f"reconstructs at most {attack.max_batch} sample(s), the update holds {batch_size}"
    if threat.clients > 1 and not attack.aggregate:
        return False, "cannot attack a secure aggregate"
    return True, ""
