"""Analytic attacks: closed-form sample recovery, no optimisation (Robbing the Fed's imprint block)."""

from .april import APRIL
from .robbing_the_fed import RobbingTheFed
from .trap_weights import TrapWeights
from .fishing import Fishing

__all__ = ["APRIL", "RobbingTheFed", "TrapWeights", "Fishing"]
