"""How a FedAvg client trains locally, shared by the client (which does it) and the attacks (which simulate it).

A FedAvg client starts from the broadcast theta_0 and runs SGD on its private data before it shares
theta_0 - theta_K (McMahan et al. 2017). Two shapes of local training:

* **full batch** (``batch_size`` None, or >= the client's data): K = ``steps`` gradient steps on all B samples;
  the simplification most attacks assume (Geiping et al. 2020, section 5);
* **minibatch epochs** (``batch_size`` b < B): E = ``epochs`` passes over the data, each in a fresh random
  order split into ceil(B / b) minibatches (the last one smaller when b does not divide B), K = E ceil(B / b)
  steps. The order is the client's secret; the server knows E, b, lr and the optimiser's settings, since it
  set them (Dimitrov et al., "Data Leakage in Federated Averaging", TMLR 2022).

Every step is PyTorch's SGD (``torch.optim.SGD`` semantics, dampening 0, no Nesterov):

    d_k = g_k + lambda theta_k,   m_k = mu m_{k-1} + d_k (m_0 = d_0),   theta_{k+1} = theta_k - lr m_k

with g_k the mean gradient of the step's minibatch, lambda the weight decay and mu the momentum.
:func:`sgd_step` is that step as a pure function of dicts of tensors, differentiable, so an attack can unroll it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class LocalTraining:
    """A FedAvg client's local optimisation (see the module docstring)."""

    lr: float
    steps: int = 1
    epochs: int = 1
    batch_size: int | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (math.isfinite(self.lr)
                                                                                     and self.lr > 0):
            raise ConfigError(f"the local learning rate must be a finite number > 0, got {self.lr!r}")
        for name in ("steps", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"local {name} must be an integer >= 1, got {v!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ConfigError(f"the local batch size must be an integer >= 1 or None, got {self.batch_size!r}")
        if self.batch_size is None and self.epochs != 1:
            raise ConfigError("local epochs need a local batch size (without one the client takes 'steps' "
                              "full-batch steps)")
        if self.batch_size is not None and self.steps != 1:
            raise ConfigError("with a local batch size the client trains for 'epochs' passes over its data; "
                              "leave 'steps' (full-batch steps) at 1")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ConfigError(f"weight decay must be a finite number >= 0, got {self.weight_decay!r}")

    def minibatched(self, n: int) -> bool:
        """Whether a client with ``n`` samples takes minibatch steps (b < n)."""
        return self.batch_size is not None and self.batch_size < n

    def batches_per_epoch(self, n: int) -> int:
        return math.ceil(n / self.batch_size) if self.minibatched(n) else 1

    def total_steps(self, n: int) -> int:
        """K: the number of SGD steps behind the update of a client with ``n`` samples."""
        return self.epochs * self.batches_per_epoch(n) if self.batch_size is not None else self.steps

    def epochs_of(self, n: int) -> int:
        """Passes over the data: E with minibatches (or a batch size >= n), else the K full-batch steps."""
        return self.epochs if self.batch_size is not None else self.steps

    def positions(self, n: int) -> list[list[int]]:
        """The minibatches of one epoch as positions 0..n-1 of that epoch's order: [[0..b-1], [b..2b-1], ...]."""
        b = self.batch_size if self.minibatched(n) else n
        return [list(range(s, min(s + b, n))) for s in range(0, n, b)]

    def schedule(self, n: int, generator: torch.Generator | None = None) -> list[list[int]]:
        """The sample indices of every step, in order: per epoch a fresh permutation (from the client's private
        ``generator``) cut into :meth:`positions`; full batch: every step uses all samples in order."""
        if not self.minibatched(n):
            return [list(range(n)) for _ in range(self.total_steps(n))]
        out = []
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=generator).tolist()
            out += [[order[p] for p in batch] for batch in self.positions(n)]
        return out

    def to_dict(self) -> dict:
        return {"lr": self.lr, "steps": self.steps, "epochs": self.epochs, "batch_size": self.batch_size,
                "momentum": self.momentum, "weight_decay": self.weight_decay}

    def describe(self, n: int) -> str:
        if self.minibatched(n):
            core = f"{self.epochs} epoch(s) x {self.batches_per_epoch(n)} minibatches of {self.batch_size}"
        else:
            core = f"{self.total_steps(n)} full-batch step(s)"
        extra = "".join([f", momentum {self.momentum:g}" if self.momentum else "",
                         f", weight decay {self.weight_decay:g}" if self.weight_decay else ""])
        return f"{core} at lr {self.lr:g}{extra}"


def sgd_step(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], training: LocalTraining,
             buffer: dict[str, torch.Tensor] | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """One SGD step as ``torch.optim.SGD`` takes it (module docstring); returns (new params, momentum buffer).

    Pure and differentiable (no in-place ops), so attacks can unroll it; ``buffer`` is None before the first step
    and stays None without momentum."""
    wd, mu = float(training.weight_decay), float(training.momentum)
    d = {k: grads[k] + wd * params[k] for k in params} if wd else grads
    if mu:
        buffer = dict(d) if buffer is None else {k: mu * buffer[k] + d[k] for k in params}
        d = buffer
    return {k: params[k] - training.lr * d[k] for k in params}, buffer


__all__ = ["LocalTraining", "sgd_step"]
