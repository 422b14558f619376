"""Federated clients: turn a private batch into the update the server receives (methods.md section 1).

* FedSGD: the mean gradient g* = (1/B) sum_j grad_theta l(f_theta(x_j), y_j), model in training mode
  (batch norm uses the batch's statistics, as in real training).
* FedAvg: local SGD from theta_0 (:class:`~.local_training.LocalTraining`: K full-batch steps, or E epochs of
  minibatches in a private random order; momentum and weight decay as ``torch.optim.SGD``); the update is
  theta_0 - theta_K.

The update then passes through the client's update transforms (defenses) in order, and is wrapped in an
:class:`~gradaudit.threat.observation.Observation` together with what the server knows. The private batch
itself never leaves this module.

DP-SGD (:class:`~gradaudit.defenses.DPSGD`, a transform with ``per_sample = True``) cannot act on the mean
update: when it is the first transform, the client computes per-sample gradients (``torch.func``) and shares
``privatize(per_sample)`` instead of the batch mean (FedSGD), or takes every local step with the privatized
gradient of the step's minibatch. The remaining transforms then apply as usual, and the observation's extras
record the guarantee of the shared update: ``dp_epsilon`` for one full-batch step (sample rate 1), composed
over the K full-batch steps or the E epochs of FedAvg (each sample is in one minibatch per epoch, so an epoch
is one Gaussian mechanism by parallel composition), and ``dp_delta``. Models with batch norm are refused (per-sample gradients
are undefined there).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..defenses.base import UpdateTransform
from ..errors import ConfigError
from ..models.layers import batchnorm_layers
from ..models.registry import ModelSpec
from .local_training import LocalTraining, sgd_step
from .observation import DataSpec, Observation


@dataclass(frozen=True)
class ServerKnowledge:
    """Which extras the threat model grants the server besides weights, update and B."""

    labels: bool = True
    bn_statistics: bool = False


def batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of a BN layer's input (over batch and spatial dims)."""
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), x.var(dims, unbiased=False)


class Client:
    """One federated client holding a private batch and the model the server sent."""

    def __init__(self, model: nn.Module, spec: ModelSpec, data: DataSpec,
                 protocol: Literal["fedsgd", "fedavg"] = "fedsgd", local_steps: int = 1,
                 local_lr: float | None = None, transforms: Sequence[UpdateTransform] = (),
                 knowledge: ServerKnowledge = ServerKnowledge(), seed: int | None = None, *,
                 local_epochs: int = 1, local_batch_size: int | None = None, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        if protocol not in ("fedsgd", "fedavg"):
            raise ConfigError(f"unknown protocol '{protocol}'; valid: fedsgd, fedavg")
        if protocol == "fedavg" and (local_steps < 1 or local_lr is None or not math.isfinite(local_lr)
                                      or local_lr <= 0):
            raise ConfigError("fedavg needs local_steps >= 1 and a finite local_lr > 0")
        self.model, self.spec, self.data = model, spec, data
        self.protocol, self.local_steps, self.local_lr = protocol, local_steps, local_lr
        self.training = None if protocol == "fedsgd" else LocalTraining(
            float(local_lr), steps=local_steps, epochs=local_epochs, batch_size=local_batch_size,
            momentum=momentum, weight_decay=weight_decay)
        self.transforms = list(transforms)
        per_sample = [i for i, t in enumerate(self.transforms) if getattr(t, "per_sample", False)]
        if len(per_sample) > 1:
            raise ConfigError("at most one per-sample defense (DP-SGD) can be applied, got "
                              + ", ".join(self.transforms[i].describe() for i in per_sample))
        if per_sample and per_sample[0] != 0:
            raise ConfigError(f"'{self.transforms[per_sample[0]].describe()}' acts on per-sample gradients while "
                              f"they are computed, so it must be the first defense")
        self.dp = self.transforms[0] if per_sample else None
        if self.dp is not None and batchnorm_layers(model):
            raise ConfigError(f"'{self.dp.describe()}' (DP-SGD) needs a model without batch norm: per-sample "
                              f"gradients are not defined when BatchNorm mixes the samples of a batch (Opacus has "
                              f"the same restriction); model '{spec.name}' has {len(batchnorm_layers(model))} "
                              f"BatchNorm layers")
        self.knowledge = knowledge
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        #: the order of the local minibatches: the client's secret, its own stream
        self.order = None if seed is None else torch.Generator().manual_seed(seed * 7 + 104729)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.data.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.data.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std

    def share(self, images: torch.Tensor, labels: torch.Tensor) -> Observation:
        """Compute the update for a private batch (images in [0, 1], shape [B, C, H, W]) and observe it."""
        if images.dim() != 4 or tuple(images.shape[1:]) != tuple(self.spec.input_shape):
            raise ConfigError(f"images must have shape [B, {', '.join(map(str, self.spec.input_shape))}], "
                              f"got {list(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ConfigError(f"labels must have shape [{images.shape[0]}], got {list(labels.shape)}")
        x = self.normalize(images)
        theta0 = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        buffers = {k: v.detach().clone() for k, v in self.model.named_buffers()}
        local = copy.deepcopy(self.model)  # the client trains its own copy; the server's model is untouched
        local.train()
        bn_layers = batchnorm_layers(local)
        stats: list[tuple[torch.Tensor, torch.Tensor]] = []

        def record(module, inputs):  # BN statistics of the private batch at theta_0 (first forward only)
            if len(stats) < len(bn_layers):
                stats.append(tuple(s.detach() for s in batch_statistics(inputs[0])))

        hooks = [bn.register_forward_pre_hook(record) for bn in bn_layers]
        try:
            if bn_layers and self.training is not None and self.training.minibatched(len(x)):
                with torch.no_grad():  # the whole private batch's statistics at theta_0, as granted
                    copy.deepcopy(local)(x)
            update = self._local_update(local, x, labels, theta0)
        finally:
            for h in hooks:
                h.remove()
        bn_stats = stats
        for transform in self.transforms[1:] if self.dp is not None else self.transforms:
            update = transform(update, generator=self.generator)
        extras = {}
        n = images.shape[0]
        if self.dp is not None:  # one full-batch Gaussian mechanism per step or epoch (sample rate 1)
            steps = self.training.epochs_of(n) if self.training is not None else 1
            extras = {"dp_epsilon": float(self.dp.epsilon(steps=steps, sample_rate=1.0)),
                      "dp_delta": float(self.dp.delta)}
        t = self.training
        return Observation(
            model=self.spec, parameters=theta0, update=update, batch_size=n, data=self.data,
            buffers=buffers, update_kind="gradient" if t is None else "local_update",
            local_steps=1 if t is None else t.total_steps(n), local_lr=None if t is None else t.lr,
            local_epochs=1 if t is None or t.batch_size is None else t.epochs,
            local_batch_size=None if t is None else t.batch_size,
            local_momentum=0.0 if t is None else float(t.momentum),
            local_weight_decay=0.0 if t is None else float(t.weight_decay),
            labels=labels.detach().clone() if self.knowledge.labels else None,
            bn_statistics=bn_stats if self.knowledge.bn_statistics else None,
            defenses=[t.describe() for t in self.transforms], extras=extras)

    def _local_update(self, local: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                      theta0: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """FedSGD: the mean gradient at theta_0. FedAvg: the local SGD steps of :attr:`training`, theta_0 - theta_K."""
        params = list(local.parameters())
        if self.protocol == "fedsgd":
            if self.dp is not None:
                from ..defenses.dpsgd import per_sample_gradients

                return self.dp.privatize(per_sample_gradients(local, x, labels), generator=self.generator)
            grads = torch.autograd.grad(F.cross_entropy(local(x), labels), params)
            return {k: g.detach() for k, g in zip(theta0, grads)}
        named = dict(local.named_parameters())
        buffer = None
        for batch in self.training.schedule(len(x), self.order):
            step = self._step_gradient(local, x[batch], labels[batch])
            with torch.no_grad():
                new, buffer = sgd_step({k: p.detach() for k, p in named.items()}, step, self.training, buffer)
                for k, p in named.items():
                    p.copy_(new[k])
        return {k: (theta0[k] - p.detach()) for k, p in local.named_parameters()}

    def _step_gradient(self, local: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The gradient one local step uses: the minibatch mean, or DP-SGD's privatized per-sample gradients."""
        if self.dp is not None:
            from ..defenses.dpsgd import per_sample_gradients

            return self.dp.privatize(per_sample_gradients(local, x, y), generator=self.generator)
        names = [k for k, _ in local.named_parameters()]
        grads = torch.autograd.grad(F.cross_entropy(local(x), y), list(local.parameters()))
        return {k: g.detach() for k, g in zip(names, grads)}
