"""Observations from updates captured elsewhere: weights as a framework ships them, named after the model.

A federated framework hands the server plain arrays: the weights it broadcast (theta_0) and what a client
returned, either its new weights theta_K (FedAvg) or its mean gradient (FedSGD). :func:`name_weights` names
such arrays after the model; :func:`captured_observation` turns named tensors into the
:class:`~gradaudit.threat.observation.Observation` the attacks read (the Flower and captured-update audit,
and ``gradaudit observation export``, both build theirs here).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ObservationError
from ..models.registry import ModelSpec, build_model
from .observation import DataSpec, Observation


def name_weights(model: nn.Module, arrays: Sequence[Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Name a list of weight arrays after ``model``: (parameters, buffers).

    ``arrays`` is in ``model.state_dict()`` order (parameters and buffers, the usual Flower convention) or in
    ``model.named_parameters()`` order (parameters only). Shapes must match; anything else is refused.
    """
    tensors = [torch.as_tensor(np.asarray(a)).detach().clone() for a in arrays]
    param_names = [n for n, _ in model.named_parameters()]
    state = model.state_dict()
    for order_name, names in (("state_dict()", list(state)), ("named_parameters()", param_names)):
        if len(tensors) != len(names):
            continue
        mismatch = [(n, tuple(t.shape), tuple(state[n].shape)) for n, t in zip(names, tensors)
                    if tuple(t.shape) != tuple(state[n].shape)]
        if mismatch:
            n, got, want = mismatch[0]
            raise ObservationError(f"weight '{n}' (in {order_name} order) has shape {got}, the model expects {want}")
        named = dict(zip(names, tensors))
        params = {n: named[n].to(state[n].dtype) for n in param_names}
        buffers = {n: t for n, t in named.items() if n not in params}
        return params, buffers
    raise ObservationError(f"got {len(tensors)} weight arrays; the model has {len(state)} state_dict() entries "
                           f"and {len(param_names)} parameters (send the weights in one of those orders)")


#: what ``local=`` may say about a FedAvg client's local SGD
LOCAL_FIELDS = ("local_epochs", "local_batch_size", "local_momentum", "local_weight_decay")


def captured_observation(spec: ModelSpec, data: DataSpec, parameters: Mapping[str, torch.Tensor],
                         buffers: Mapping[str, torch.Tensor], *, batch_size: int,
                         returned: Mapping[str, torch.Tensor] | None = None,
                         gradient: Mapping[str, torch.Tensor] | None = None, local_steps: int = 1,
                         local_lr: float | None = None, defenses: Sequence[str] = (),
                         extras: dict[str, Any] | None = None, local: dict[str, Any] | None = None) -> Observation:
    """The Observation of one client from named tensors: theta_0 (``parameters``, ``buffers``) and either its
    returned weights theta_K (FedAvg: update theta_0 - theta_K, needs ``local_lr``) or its mean ``gradient``
    (FedSGD). ``local``: the rest of the client's local SGD where it took minibatches or momentum
    (``local_epochs``, ``local_batch_size``, ``local_momentum``, ``local_weight_decay``; ``local_steps`` is then
    the total number of steps). A parameter missing from what the client returned is refused, naming it."""
    if (returned is None) == (gradient is None):
        raise ObservationError("a captured update is either the returned weights (FedAvg) or a gradient (FedSGD)")
    unknown = sorted(set(local or {}) - set(LOCAL_FIELDS))
    if unknown:
        raise ObservationError(f"'{unknown[0]}' is not a field of local training; valid: {', '.join(LOCAL_FIELDS)}")
    source = returned if returned is not None else gradient
    missing = [k for k in parameters if k not in source]
    if missing:
        raise ObservationError(f"the client's {'weights' if returned is not None else 'gradient'} lack parameter "
                               f"'{missing[0]}'")
    if returned is not None:
        update = {k: parameters[k] - returned[k].to(parameters[k].dtype) for k in parameters}
        kind, steps, lr = "local_update", int(local_steps), None if local_lr is None else float(local_lr)
    else:
        update = {k: gradient[k].to(parameters[k].dtype) for k in parameters}
        kind, steps, lr = "gradient", 1, None
    return Observation(model=spec, parameters=dict(parameters), update=update, batch_size=int(batch_size),
                       data=data, buffers=dict(buffers), update_kind=kind, local_steps=steps, local_lr=lr,
                       labels=None, defenses=list(defenses), extras=dict(extras or {}),
                       **(dict(local or {}) if kind == "local_update" else {}))


def local_update_observation(spec: ModelSpec, data: DataSpec, broadcast: Sequence[Any], returned: Sequence[Any],
                             *, batch_size: int, local_steps: int, local_lr: float,
                             model: nn.Module | None = None, defenses: Sequence[str] = (),
                             extras: dict[str, Any] | None = None, local: dict[str, Any] | None = None
                             ) -> Observation:
    """The Observation of one FedAvg client from framework arrays: theta_0 (``broadcast``) and its returned
    weights theta_K (``returned``), both in the model's ``state_dict()`` or ``named_parameters()`` order."""
    model = model if model is not None else build_model(spec)
    theta0, buffers = name_weights(model, broadcast)
    theta_k, _ = name_weights(model, returned)
    return captured_observation(spec, data, theta0, buffers, batch_size=batch_size, returned=theta_k,
                                local_steps=local_steps, local_lr=local_lr, defenses=defenses, extras=extras,
                                local=local)


__all__ = ["captured_observation", "local_update_observation", "name_weights"]
