"""Defenses by spec string, as the CLI and YAML write them: ``"name:strength"``.

    noise:0.01            GaussianNoise(sigma=0.01)
    prune:0.9             GradientPruning(p=0.9, scope="layer")
    prune-global:0.9      GradientPruning(p=0.9, scope="global")
    clip:4                GradientClipping(C=4)
    dropout:0.5           GradientDropout(p=0.5)            (dropout-rescaled:0.5 divides the kept entries by 1-p)
    dpsgd:1.0,1.1         DPSGD(clip=1.0, noise_multiplier=1.1)   (an optional third number is delta;
                          the describe() form "dpsgd:C=1,sigma=1.1[,delta=1e-05]" is accepted too)

    secagg:4              SecureAggregation(num_clients=4)  (acts on the aggregate of 4 clients, not on one update)

Every defense declares itself where it is defined (:func:`~gradaudit.defenses.base.register_defense`: family,
parameters, per-sample or not, what it acts on, what it needs of the model), so adding one is one file.
Every ``describe()`` parses back to an equal defense. Local aggregation is the client's ``fedavg`` protocol
and a large batch is the batch-size setting.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, unknown_name
from .base import DEFENSES, DefenseInfo


def _discover() -> None:
    """Import every module of :mod:`gradaudit.defenses`: each defense registers itself (:func:`register_defense`),
    so a new defense is one new file."""
    import importlib
    import pkgutil

    from .. import defenses as package

    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)


_discover()


def _number(spec: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"defense '{spec}': '{text}' is not a number") from None


def parse_defense(spec: str) -> Any:
    """Build the defense a spec names; ConfigError (listing the valid names) on anything malformed."""
    if not isinstance(spec, str):
        raise ConfigError(f"a defense is given as a 'name:strength' string, got {spec!r}")
    name, sep, value = spec.strip().partition(":")
    name = name.strip()
    if name not in DEFENSES:
        raise unknown_name("defense", name, DEFENSES)
    info = DEFENSES[name]
    counts, example, keys = info.counts, info.example, info.parameters
    if not sep or not value.strip():
        raise ConfigError(f"defense '{spec}' needs a strength, e.g. '{example}'")
    parts = [p.strip() for p in value.split(",")]
    if all("=" in p for p in parts):  # keyword form, as describe() writes dpsgd
        given = {}
        for p in parts:
            key, _, text = p.partition("=")
            if key.strip() not in keys:
                raise ConfigError(f"defense '{spec}': unknown parameter '{key.strip()}'; valid: {', '.join(keys)}")
            given[key.strip()] = _number(spec, text.strip())
        missing = [k for k in keys[:min(counts)] if k not in given]
        if missing:
            raise ConfigError(f"defense '{spec}' lacks '{missing[0]}', e.g. '{example}'")
        args = [given[k] for k in keys if k in given]
    elif any("=" in p for p in parts):
        raise ConfigError(f"defense '{spec}': give either all numbers or all key=value pairs, e.g. '{example}'")
    else:
        args = [_number(spec, p) for p in parts]
    if len(args) not in counts:
        want = " or ".join(map(str, counts))
        raise ConfigError(f"defense '{name}' takes {want} number{'s' if max(counts) > 1 else ''}, "
                          f"got {len(args)} in '{spec}'; e.g. '{example}'")
    if info.acts_on == "aggregate":
        if any(a != int(a) for a in args):
            raise ConfigError(f"defense '{spec}': the number of clients must be an integer")
        args = [int(a) for a in args]
    return info.factory(*args)


def defense_info(defense: Any) -> DefenseInfo:
    """The declaration of a defense (a spec string or a built defense)."""
    spec = defense if isinstance(defense, str) else defense.describe()
    name = spec.strip().partition(":")[0].strip()
    if name not in DEFENSES:
        raise unknown_name("defense", name, DEFENSES)
    return DEFENSES[name]


def defense_strength(defense: Any) -> float | None:
    """The number that measures a defense's strength (its declared ``strength`` parameter), or None."""
    built = parse_defense(defense) if isinstance(defense, str) else defense
    info = defense_info(built)
    attribute = {"C": "C", "N": "num_clients"}.get(info.strength, info.strength)
    for name in (attribute, info.strength, "noise_multiplier" if info.strength == "sigma" else ""):
        if name and hasattr(built, name):
            value = getattr(built, name)
            return float(value) if value is not None else None
    return None


__all__ = ["DEFENSES", "DefenseInfo", "defense_info", "defense_strength", "parse_defense"]
