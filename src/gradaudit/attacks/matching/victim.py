"""The attacker's functional copy of the victim model, rebuilt from an Observation alone.

The server knows the architecture and theta_0, so it can compute the update any candidate batch would
produce. This module rebuilds the model from ``Observation.model``, loads theta_0, and exposes a pure
function ``logits, bn_inputs = victim(params, x)`` usable inside ``torch.func`` transforms (grad, vmap).

Batch norm runs as the client ran it, in training mode on the batch's own statistics; running-statistics
tracking is switched off so that a forward pass has no side effect (required by ``vmap``). Forward pre-hooks
on every BN layer return the (mean, biased variance) of its input, for the BN-statistics prior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ...models.registry import build_model
from ...threat.client import batch_statistics, batchnorm_layers
from ...threat.observation import Observation


class FunctionalVictim:
    def __init__(self, observation: Observation, device: torch.device | str = "cpu") -> None:
        model = build_model(observation.model)
        observation.check_model(model)
        self.bn_layers = batchnorm_layers(model)
        self._running = [(bn.running_mean, bn.running_var) for bn in self.bn_layers]
        for bn in self.bn_layers:
            bn.track_running_stats = False
            bn.running_mean = None
            bn.running_var = None
            bn.num_batches_tracked = None
        model.train()
        self.model = model.to(device)
        self.device = torch.device(device)
        self.names = [k for k, _ in model.named_parameters()]
        self.params = {k: observation.parameters[k].to(self.device, torch.float32) for k in self.names}
        self.buffers = {k: v.to(self.device) for k, v in observation.buffers.items()
                        if k in dict(model.named_buffers())}
        self._captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        for bn in self.bn_layers:
            bn.register_forward_pre_hook(lambda m, inp: self._captured.append(batch_statistics(inp[0])))

    def running_statistics(self, observation: Observation) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """BN running (mean, var) as the server sent them (a fallback prior when batch statistics are not granted)."""
        out = []
        prefix = {id(m): n for n, m in self.model.named_modules()}
        for bn in self.bn_layers:
            name = prefix[id(bn)]
            mean = observation.buffers.get(f"{name}.running_mean")
            var = observation.buffers.get(f"{name}.running_var")
            if mean is None or var is None:
                return []
            out.append((mean.to(self.device), var.to(self.device)))
        return out

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor
                 ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        self._captured = []
        logits = functional_call(self.model, (params, self.buffers), (x,))
        captured, self._captured = self._captured, []
        return logits, captured

    def loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        """Cross-entropy of the batch (hard labels [B] or probabilities [B, K]); aux = BN input statistics."""
        logits, stats = self(params, x)
        return F.cross_entropy(logits, y), stats


def last_linear_layer(model: nn.Module, num_classes: int) -> tuple[str, str | None]:
    """Names of the classifier's weight (a [num_classes, F] matrix) and bias, the last such layer."""
    names = [k for k, _ in model.named_parameters()]
    shapes = dict((k, p.shape) for k, p in model.named_parameters())
    for name in reversed(names):
        if len(shapes[name]) == 2 and shapes[name][0] == num_classes:
            bias = name[: -len("weight")] + "bias" if name.endswith("weight") else None
            return name, bias if bias in shapes else None
    raise ValueError("model has no final linear layer with num_classes outputs")
