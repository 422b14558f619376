"""Analytic attacks: closed-form sample recovery, no optimisation.

Honest server: SPEAR (exact batches from a linear layer followed by ReLU) and APRIL (B=1 through a ViT's position
embedding). Malicious server (a model it changed): Robbing the Fed's imprint block, trap weights, class fishing.
"""

from .april import APRIL
from .fishing import Fishing
from .robbing_the_fed import RobbingTheFed
from .spear import SPEAR
from .trap_weights import TrapWeights

__all__ = ["APRIL", "Fishing", "RobbingTheFed", "SPEAR", "TrapWeights"]
