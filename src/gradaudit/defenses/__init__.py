"""Defenses as update transforms. The full set (pruning, clipping, DP-SGD, ...) extends this seam."""

from .base import UpdateTransform
from .noise import GaussianNoise
from .registry import DEFENSES, parse_defense

__all__ = ["UpdateTransform", "GaussianNoise", "DEFENSES", "parse_defense"]
