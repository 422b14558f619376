"""The uniform attack interface: ``Attack(...).reconstruct(observation) -> Reconstruction``.

In the style of torchattacks / captum: constructor arguments are the hyper-parameters (defaults are the
papers'), and an attack consumes only an :class:`~gradaudit.threat.Observation`, never the private batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..threat.observation import Observation
from ..threat.threat_model import AttackThreat

#: progress callback: (iterations done, iterations total, current best matching loss)
ProgressFn = Callable[[int, int, float], None]


@dataclass
class Reconstruction:
    """An attack's output.

    Attributes:
        images: reconstructed batch in pixel space [0, 1], shape [B, C, H, W] (CPU), in the attack's order.
        labels: the labels the attack used or recovered, [B] (None if it did not produce any).
        matching_loss: the gradient-matching distance of the kept restart at the end.
        restart_losses: final matching distance of every restart.
        history: (iteration, best matching distance over restarts) every few iterations.
        seconds: wall-clock time of the attack.
        features: for feature-level attacks (``tensor-features``), the recovered intermediate features [B, d]
            (unit norm, each up to sign), else None; ``config["feature_layer"]`` names the layer they enter.
        candidates: for a self-tuning attack, what every candidate setting reached: candidate index ->
            (images [B, C, H, W] in [0, 1], labels [B]) at its best iterate (``config["tuning"]`` has the
            settings and scores), so evaluation can measure the selection's regret; else None.
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    attack: str
    matching_loss: float = float("nan")
    restart_losses: list[float] = field(default_factory=list)
    history: list[tuple[int, float]] = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    label_source: str = "none"
    config: dict[str, Any] = field(default_factory=dict)
    features: Optional[torch.Tensor] = None
    candidates: Optional[dict[int, tuple[torch.Tensor, Optional[torch.Tensor]]]] = None


class Attack(ABC):
    """Base class of all reconstruction attacks."""

    name: str = "attack"
    #: the threat model the attack needs (server, server-sent model, labels, prior, batch size): declared on each
    #: attack class; :func:`gradaudit.threat.threat_model.applies` checks it against an observation
    threat: AttackThreat = AttackThreat()
    #: may this attack import a ``package.module:factory`` it is given (a generator prior)? Set by the caller's
    #: explicit choice (:func:`gradaudit.attacks.build_attack`'s ``trust_code``), never by a file
    trust_code: bool = False
    #: may it read a generator checkpoint whose checksum does not cover its metadata (``allow_legacy``)?
    allow_legacy: bool = False

    @abstractmethod
    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        """Rebuild the private batch behind ``observation``."""


#: name -> attack class, filled by :func:`register_attack` where each attack is defined (the gradient-matching
#: presets are settings of one class and live in :mod:`gradaudit.attacks.matching.presets`)
ATTACKS: dict[str, type[Attack]] = {}


def register_attack(name: str):
    """Class decorator: ``build_attack(name, device=, seed=, **hyper_parameters)`` builds the decorated attack
    (its constructor takes the hyper-parameters with the paper's defaults, plus ``device`` and ``seed``)."""
    def decorate(cls: type[Attack]) -> type[Attack]:
        if name in ATTACKS:
            raise ValueError(f"attack '{name}' is registered twice")
        ATTACKS[name] = cls
        return cls
    return decorate
