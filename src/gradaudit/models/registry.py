"""Victim architectures by name, and user models as ``package.module:factory``.

A model is fully described by a :class:`ModelSpec` (name, number of classes, input shape, keyword
arguments), which is what an Observation records so that a server (and the attacker) can rebuild the same
architecture. A user factory is called with ``num_classes`` and ``input_shape`` when its signature accepts
them, plus the spec's keyword arguments, and must return an ``nn.Module``. A factory is code: it is imported
only when trusted (:mod:`gradaudit.trust`: ``--trust-model-code``, ``trust_code=True``), never because a file
names it.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError, unknown_name
from ..trust import is_code_reference, load_code_reference, trusting_code
#: name -> architecture, filled by :func:`register_model` where each architecture is defined (the modules are
#: imported by :mod:`gradaudit.models`)
MODELS: dict[str, Callable[..., nn.Module]] = {}
#: the models a malicious server sends (changed for an attack): their observations' threat model says so
MALICIOUS_MODELS: set[str] = set()


def register_model(name: str, *, malicious: bool = False):
    """Class (or factory) decorator: build it for ``ModelSpec(name, ...)``. ``malicious``: a model only a
    malicious server sends (:mod:`gradaudit.threat.threat_model`)."""
    def decorate(factory):
        if name in MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        MODELS[name] = factory
        if malicious:
            MALICIOUS_MODELS.add(name)
        return factory
    return decorate


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the victim architecture (not its weights).

    ``trust_code`` lets :func:`build_model` import a ``package.module:factory`` name; it is set only by the
    caller's explicit choice (never read from a file: :meth:`from_dict` leaves it False, :meth:`to_dict` omits it).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    trust_code: bool = field(default=False, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("trust_code")
        d["input_shape"] = list(self.input_shape)
        return d

    def trusted(self, trust_code: bool = True) -> "ModelSpec":
        """This spec with ``trust_code`` set (a copy)."""
        return ModelSpec(self.name, self.num_classes, self.input_shape, dict(self.kwargs), trust_code=trust_code)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        try:
            spec = cls(name=str(d["name"]), num_classes=int(d["num_classes"]),
                       input_shape=tuple(int(s) for s in d["input_shape"]), kwargs=dict(d.get("kwargs") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"model spec needs name, num_classes, input_shape (a list of 3 integers) and "
                              f"optional kwargs (a mapping): {type(e).__name__}: {e}") from None
        if len(spec.input_shape) != 3 or min(spec.input_shape) < 1 or spec.num_classes < 1:
            raise ConfigError(f"model spec: input_shape must be 3 positive integers and num_classes >= 1, got "
                              f"{list(spec.input_shape)} and {spec.num_classes}")
        return spec


def build_model(spec: ModelSpec, *, trust_code: bool = False) -> nn.Module:
    """Instantiate the architecture of ``spec`` (weights come from the caller's seed or an Observation).

    A ``package.module:factory`` name is imported only with ``trust_code=True``, a spec built with
    ``trust_code=True``, or inside :func:`gradaudit.trust.trusting_code`; otherwise it is refused before any
    import (:class:`gradaudit.trust.UntrustedCodeError`).
    """
    trust = trust_code or spec.trust_code
    if is_code_reference(spec.name):
        factory = load_code_reference(spec.name, "model", trust)
    elif spec.name in MODELS:
        factory = MODELS[spec.name]
    else:
        raise unknown_name("model", spec.name, list(MODELS) + ["package.module:factory"])
    kwargs = dict(spec.kwargs)
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("num_classes", spec.num_classes), ("input_shape", tuple(spec.input_shape))):
        if accepts_any or key in params:
            kwargs.setdefault(key, value)
    try:
        with trusting_code(trust):  # models the factory builds in turn (a malicious model's base) inherit trust
            model = factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model '{spec.name}' rejected its arguments {_kwargs_line(kwargs)}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory '{spec.name}' returned {type(model).__name__}, not a torch nn.Module")
    return model


def _kwargs_line(kwargs: dict[str, Any]) -> str:
    """The keyword arguments as one short line for messages."""
    text = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
    return "{" + (text if len(text) <= 200 else text[:197] + "...") + "}"
