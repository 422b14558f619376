"""Victim architectures by name, and user models as ``package.module:factory``.

A model is fully described by a :class:`ModelSpec` (name, number of classes, input shape, keyword
arguments), which is what an Observation records so that a server (and the attacker) can rebuild the same
architecture. A user factory is called with ``num_classes`` and ``input_shape`` when its signature accepts
them, plus the spec's keyword arguments, and must return an ``nn.Module``.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError, unknown_name
from .convnet import ConvNet
from .lenet import LeNet
from .malicious import ImprintedModel, WideFeatureModel
from .mlp import TwoLayerMLP
from .resnet import ResNet18

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "convnet": ConvNet,
    "resnet18": ResNet18,
    "mlp": TwoLayerMLP,
    "imprint": ImprintedModel,  # malicious server: Robbing the Fed (models/malicious.py)
    "wide-head": WideFeatureModel,  # malicious server: the tensor method's wide layer (models/malicious.py)
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the victim architecture (not its weights)."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        try:
            return cls(name=str(d["name"]), num_classes=int(d["num_classes"]),
                       input_shape=tuple(int(s) for s in d["input_shape"]), kwargs=dict(d.get("kwargs") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"model spec needs name, num_classes, input_shape: {e}") from None


def _load_factory(target: str) -> Callable[..., nn.Module]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"a user model is given as 'package.module:factory', got '{target}'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import module '{module_name}' for model '{target}': {e}") from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module '{module_name}' has no attribute '{attr}'") from None
    if not callable(factory):
        raise ConfigError(f"'{target}' is not callable")
    return factory


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate the architecture of ``spec`` (weights come from the caller's seed or an Observation)."""
    if ":" in spec.name:
        factory = _load_factory(spec.name)
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
        model = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model '{spec.name}' rejected its arguments {sorted(kwargs)}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory '{spec.name}' returned {type(model).__name__}, not a torch nn.Module")
    return model
