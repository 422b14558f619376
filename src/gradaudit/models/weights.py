"""Victim weights from a file: a plain safetensors state dict (tensors only; nothing is ever unpickled).

A real audit attacks the model a client receives mid-training, not a freshly initialised one. The weights are
the model's ``state_dict()`` (parameters and buffers, e.g. batch-norm running statistics) saved with
:func:`save_weights` or by any framework as safetensors under the same names. :func:`load_weights` refuses,
with one line, a file that is missing or not safetensors, names a tensor the model does not have, lacks one
it has, or holds a tensor of another shape or a non-finite value; the model is left unchanged then.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors weights file (ConfigError for a missing or unreadable file)."""
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"weights file not found: {p}" if not p.exists() else f"weights '{p}' is not a file")
    try:
        return load_file(str(p))
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise ConfigError(f"weights '{p}' is not a valid safetensors file: {' '.join(str(e).split())}") from None


def check_weights(model: nn.Module, tensors: dict[str, torch.Tensor], name: str, where: str) -> None:
    """Refuse ``tensors`` unless they are exactly ``model``'s state (names, shapes, finite values)."""
    state = model.state_dict()
    for key, t in state.items():
        if key not in tensors:
            raise ConfigError(f"weights '{where}' do not fit model '{name}': they lack tensor '{key}' "
                              f"(shape {list(t.shape)})")
        if tuple(tensors[key].shape) != tuple(t.shape):
            raise ConfigError(f"weights '{where}' do not fit model '{name}': tensor '{key}' has shape "
                              f"{list(tensors[key].shape)}, the model expects {list(t.shape)}")
    extra = sorted(set(tensors) - set(state))
    if extra:
        raise ConfigError(f"weights '{where}' do not fit model '{name}': tensor '{extra[0]}' is not part of it")
    for key, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ConfigError(f"weights '{where}': tensor '{key}' contains NaN or inf")


def load_weights(model: nn.Module, path: str | os.PathLike, name: str = "model") -> nn.Module:
    """Load the safetensors state dict at ``path`` into ``model`` (checked first: see the module docstring)."""
    tensors = read_weights(path)
    check_weights(model, tensors, name, str(path))
    state = model.state_dict()
    model.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()})
    return model


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model.state_dict()`` as safetensors (atomically, through a temporary name)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(p)
    return p


__all__ = ["check_weights", "load_weights", "read_weights", "save_weights"]
