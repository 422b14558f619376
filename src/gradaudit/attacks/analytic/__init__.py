"""Analytic attacks: closed-form sample recovery, no optimisation (Robbing the Fed's imprint block)."""

from .robbing_the_fed import RobbingTheFed

__all__ = ["RobbingTheFed"]
