"""Attacks by name: ``build_attack("inverting-gradients", iterations=200)``."""

from __future__ import annotations

import inspect

import torch

from ..errors import ConfigError, unknown_name
from ..trust import refuse_untrusted
from .analytic.robbing_the_fed import RobbingTheFed
from .base import Attack
from .features.cpa import CocktailPartyAttack
from .features.feature_matching import FeatureMatchingAttack
from .features.tensor_attack import TensorFeatureAttack
from .matching.engine import GradientMatchingAttack
from .matching.presets import PRESETS, preset_config

#: attacks that are not gradient-matching presets: name -> class taking (device=, seed=, **hyper-parameters)
ANALYTIC: dict[str, type[Attack]] = {"robbing-the-fed": RobbingTheFed, "cpa": CocktailPartyAttack,
                                     "tensor-features": TensorFeatureAttack, "feature-matching": FeatureMatchingAttack}


def attack_names() -> list[str]:
    return sorted([*PRESETS, *ANALYTIC])


def build_attack(name: str, *, device: str | torch.device = "cpu", seed: int = 0, trust_code: bool = False,
                 allow_legacy: bool = False, **overrides) -> Attack:
    """Instantiate a named attack; ``overrides`` replace the preset's hyper-parameters (None = keep).

    ``trust_code`` lets the attack import a ``package.module:factory`` it is given (a generator prior); without
    it such a name is refused here, before any work (:mod:`gradaudit.trust`). ``allow_legacy`` lets it read a
    generator checkpoint whose checksum does not cover its metadata (:mod:`gradaudit.checked_files`). Neither
    is a hyper-parameter: no config file can set them."""
    attack = _build(name, device, seed, overrides)
    attack.trust_code, attack.allow_legacy = bool(trust_code), bool(allow_legacy)
    generator = getattr(getattr(attack, "config", None), "generator", None)
    if generator is not None:
        from .priors.checkpoint import is_generator_factory

        if is_generator_factory(generator):
            refuse_untrusted(str(generator), "generator", trust_code)
    return attack


def _build(name: str, device, seed: int, overrides: dict) -> Attack:
    if name in ANALYTIC:
        cls = ANALYTIC[name]
        accepted = set(inspect.signature(cls).parameters) - {"device", "seed"}
        given = {k: v for k, v in overrides.items() if v is not None}
        bad = sorted(set(given) - accepted)
        if bad:
            raise ConfigError(f"attack '{name}' has no hyper-parameter {', '.join(repr(b) for b in bad)}; "
                              f"valid: {', '.join(sorted(accepted))}")
        return cls(device=device, seed=seed, **given)
    if name not in PRESETS:
        raise unknown_name("attack", name, attack_names())
    return GradientMatchingAttack(preset_config(name, **overrides), device=device, seed=seed, name=name)
