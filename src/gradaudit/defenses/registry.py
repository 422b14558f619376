"""Defenses by spec string, as the CLI and YAML write them: ``"noise:0.01"`` -> GaussianNoise(0.01)."""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError, unknown_name
from .base import UpdateTransform
from .noise import GaussianNoise

DEFENSES: dict[str, Callable[[float], UpdateTransform]] = {
    "noise": GaussianNoise,
}


def parse_defense(spec: str) -> UpdateTransform:
    name, sep, value = spec.partition(":")
    if name not in DEFENSES:
        raise unknown_name("defense", name, DEFENSES)
    if not sep:
        raise ConfigError(f"defense '{spec}' needs a strength, e.g. '{name}:0.01'")
    try:
        strength = float(value)
    except ValueError:
        raise ConfigError(f"defense '{spec}': strength '{value}' is not a number") from None
    return DEFENSES[name](strength)
