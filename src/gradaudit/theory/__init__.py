"""Two-layer theory of seed 002: the empirical check of its bounds (``gradaudit bounds``)."""

from .two_layer import BoundsConfig, BoundsResult, fit_exponent, measure_point, run_bounds

__all__ = ["BoundsConfig", "BoundsResult", "run_bounds", "measure_point", "fit_exponent"]
