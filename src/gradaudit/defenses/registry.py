"""Defenses by spec string, as the CLI and YAML write them: ``"name:strength"``.

    noise:0.01            GaussianNoise(sigma=0.01)
    prune:0.9             GradientPruning(p=0.9, scope="layer")
    prune-global:0.9      GradientPruning(p=0.9, scope="global")
    clip:4                GradientClipping(C=4)
    dropout:0.5           GradientDropout(p=0.5)            (dropout-rescaled:0.5 divides the kept entries by 1-p)
    dpsgd:1.0,1.1         DPSGD(clip=1.0, noise_multiplier=1.1)   (an optional third number is delta;
                          the describe() form "dpsgd:C=1,sigma=1.1[,delta=1e-05]" is accepted too)

Every transform's ``describe()`` parses back to an equal transform. Secure aggregation is not a per-client
transform (see :mod:`gradaudit.defenses.secure_aggregation`); local aggregation is the client's ``fedavg``
protocol and a large batch is the batch-size setting.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from ..errors import ConfigError, unknown_name
from .base import UpdateTransform
from .clipping import GradientClipping
from .dpsgd import DPSGD
from .dropout import GradientDropout
from .noise import GaussianNoise
from .pruning import GradientPruning

#: name -> factory taking the spec's numbers positionally.
DEFENSES: dict[str, Callable[..., UpdateTransform]] = {
    "noise": GaussianNoise,
    "prune": partial(GradientPruning, scope="layer"),
    "prune-global": partial(GradientPruning, scope="global"),
    "clip": GradientClipping,
    "dropout": GradientDropout,
    "dropout-rescaled": partial(GradientDropout, rescale=True),
    "dpsgd": DPSGD,
}

#: name -> (allowed numbers of arguments, example spec, names of the keyword form).
_USAGE: dict[str, tuple[tuple[int, ...], str, tuple[str, ...]]] = {
    "noise": ((1,), "noise:0.01", ("sigma",)),
    "prune": ((1,), "prune:0.9", ("p",)),
    "prune-global": ((1,), "prune-global:0.9", ("p",)),
    "clip": ((1,), "clip:4", ("C",)),
    "dropout": ((1,), "dropout:0.5", ("p",)),
    "dropout-rescaled": ((1,), "dropout-rescaled:0.5", ("p",)),
    "dpsgd": ((2, 3), "dpsgd:1.0,1.1 (clip C, noise multiplier sigma[, delta])", ("C", "sigma", "delta")),
}


def _number(spec: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"defense '{spec}': '{text}' is not a number") from None


def parse_defense(spec: str) -> UpdateTransform:
    """Build the transform a spec names; ConfigError (listing the valid names) on anything malformed."""
    if not isinstance(spec, str):
        raise ConfigError(f"a defense is given as a 'name:strength' string, got {spec!r}")
    name, sep, value = spec.strip().partition(":")
    name = name.strip()
    if name not in DEFENSES:
        raise unknown_name("defense", name, DEFENSES)
    counts, example, keys = _USAGE[name]
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
    return DEFENSES[name](*args)
