"""Feature-level attacks: blind source separation of a linear layer's gradient (Cocktail Party Attack) and
tensor-based feature reconstruction for two-layer heads (Wang, Lee, Lei 2023)."""

from .cpa import CocktailPartyAttack
from .tensor import (FeatureReconstruction, feature_cosine_similarity, feature_matching_error,
                     feature_reconstruction_error, reconstruct_features, synthetic_two_layer, two_layer_gradients)
from .tensor_attack import TensorFeatureAttack, reconstruct_observation_features

__all__ = ["CocktailPartyAttack", "FeatureReconstruction", "reconstruct_features", "feature_reconstruction_error",
           "feature_matching_error", "feature_cosine_similarity", "synthetic_two_layer", "two_layer_gradients",
           "TensorFeatureAttack", "reconstruct_observation_features"]
