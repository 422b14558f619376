"""Facts about a model's layers that several layers of gradaudit need (one definition each)."""

from __future__ import annotations

from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """Batch-norm modules in registration order (the order their statistics are recorded in)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a batch-norm layer (per-sample gradients are then undefined)."""
    return bool(batchnorm_layers(model))


__all__ = ["batchnorm_layers", "has_batchnorm"]
