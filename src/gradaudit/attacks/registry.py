"""Attacks by name: ``build_attack("inverting-gradients", iterations=200)``, and each attack's hyper-parameter
schema, found by introspection (:func:`attack_schema`): the gradient-matching presets take the fields of
:class:`~.matching.engine.MatchingConfig`, the other attacks their constructor's keyword arguments, with the
types and bounds their annotations declare. Run configs and sweeps validate an attack's parameters against it
before any work, so no schema is copied by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Optional

import torch
from pydantic import BaseModel, ConfigDict, create_model

from ..errors import ConfigError, unknown_name
from ..trust import refuse_untrusted
from ..threat.threat_model import AttackThreat
from .base import ATTACKS, Attack
from .matching.engine import GradientMatchingAttack
from .matching.presets import PRESETS, preset_config


def _discover() -> None:
    """Import every module of :mod:`gradaudit.attacks`: each attack registers itself (:func:`register_attack`),
    so a new attack is one new file."""
    import importlib
    import pkgutil

    from .. import attacks as package

    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)


_discover()


def attack_names() -> list[str]:
    return sorted([*PRESETS, *ATTACKS])


def attack_threat(name: str) -> AttackThreat:
    """The threat model attack ``name`` needs (:mod:`gradaudit.threat.threat_model`): declared on the attack
    class, or for a gradient-matching preset read from its settings (a generator parameterisation brings a
    pretrained generator as prior; the BN regulariser uses the batch's BN statistics when the server has them)."""
    if name in ATTACKS:
        return ATTACKS[name].threat
    if name not in PRESETS:
        raise unknown_name("attack", name, attack_names())
    settings = PRESETS[name]
    generator = settings.get("parameterization") in ("latent", "generator", "gias")
    notes = {"dip": "deep image prior: an untrained generator's architecture as the prior",
             "gradinversion": "uses the batch's BN statistics when the server knows them"}
    note = notes.get(name, "pretrained generator as the image prior" if generator else "gradient matching")
    return AttackThreat(server="honest", labels="uses", prior="generator" if generator else "none", note=note)


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
    if name in ATTACKS:
        cls = ATTACKS[name]
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


@functools.lru_cache(maxsize=None)
def attack_schema(name: str) -> type[BaseModel]:
    """A pydantic model of attack ``name``'s hyper-parameters (every field optional: None keeps the attack's
    default), built from the attack's own annotations; unknown names and inf/nan are refused."""
    if name in PRESETS:
        from .matching.engine import MatchingConfig

        hints = typing.get_type_hints(MatchingConfig, include_extras=True)
        names = [f.name for f in dataclasses.fields(MatchingConfig)]
    elif name in ATTACKS:
        init = ATTACKS[name].__init__
        hints = typing.get_type_hints(init, include_extras=True)
        names = [p for p in inspect.signature(init).parameters if p not in ("self", "device", "seed")]
        names = [p for p in names if inspect.signature(init).parameters[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
                 or inspect.signature(init).parameters[p].kind is inspect.Parameter.KEYWORD_ONLY]
    else:
        raise unknown_name("attack", name, attack_names())
    fields = {n: (Optional[hints.get(n, Any)], None) for n in names}
    config = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)
    return create_model(f"AttackParams_{name.replace('-', '_')}", __config__=config, **fields)


def attack_parameters(name: str) -> list[str]:
    """The hyper-parameter names attack ``name`` takes."""
    return list(attack_schema(name).model_fields)
