"""The gradient-matching engine: distances, regularizers, label recovery, optimisers, restarts, presets."""

from .distances import DISTANCES, cosine_distance, l2_distance, reweighted_cosine_distance
from .engine import GradientMatchingAttack, MatchingConfig
from .labels import recover_labels
from .presets import PRESETS, preset_config
from .regularizers import REGULARIZERS

__all__ = ["GradientMatchingAttack", "MatchingConfig", "PRESETS", "preset_config", "recover_labels",
           "DISTANCES", "REGULARIZERS", "l2_distance", "cosine_distance", "reweighted_cosine_distance"]
