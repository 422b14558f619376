"""Attacks by name: ``build_attack("inverting-gradients", iterations=200)``."""

from __future__ import annotations

import torch

from .base import Attack
from .matching.engine import GradientMatchingAttack
from .matching.presets import PRESETS, preset_config


def attack_names() -> list[str]:
    return sorted(PRESETS)


def build_attack(name: str, *, device: str | torch.device = "cpu", seed: int = 0, **overrides) -> Attack:
    """Instantiate a named attack; ``overrides`` replace the preset's hyper-parameters (None = keep)."""
    return GradientMatchingAttack(preset_config(name, **overrides), device=device, seed=seed, name=name)
