"""Reconstruction attacks. Each consumes only an Observation: ``attack.reconstruct(observation)``."""

from .base import Attack, Reconstruction
from .matching import GradientMatchingAttack, MatchingConfig
from .registry import attack_names, build_attack

__all__ = ["Attack", "Reconstruction", "GradientMatchingAttack", "MatchingConfig", "build_attack", "attack_names"]
