"""Secure aggregation (Bonawitz et al. 2017; seed 002 section 3.3): the server sees only the aggregate of N updates.

Not a per-update transform: it combines the observations of N clients that all received the same model theta_0
(same architecture, parameters, buffers, protocol, K, lr and client-side defenses) into the one observation
the server really holds.

What the server sees. Client n shares u_n; for FedSGD u_n = g_n = (1/B_n) sum_{j in batch n} grad l_j, a mean
over its own B_n samples. Under secure aggregation the server learns only the sum over clients (with the usual
FedAvg weighting the clients pre-scale by B_n, and the server also learns sum_n B_n), never an individual u_n,
which client a sample came from, or any client's batch-norm statistics. With equal batch sizes B,

    sum_n u_n = sum_n (1/B) sum_{j in batch n} grad l_j = N * [ (1/(N B)) sum_{j=1}^{N B} grad l_j ],

i.e. the plain sum is N times the mean gradient of one batch of N*B samples whose ownership is unknown. This is
exactly the observation of a single client with an N*B batch (seed 002: "no extra defensive strength compared
with directly reconstructing a large batch", but the attacker cannot tell who owns what).

Normalisation (what :meth:`SecureAggregation.aggregate` returns). The attack engine expects ``update_kind =
"gradient"`` to be the *mean* gradient over ``batch_size`` samples, so the aggregate is normalised as

    u = sum_n (B_n / sum_m B_m) u_n,      which for equal B_n = B is (1/N) sum_n u_n,

the mean gradient over all N*B samples (for FedAvg, the FedAvg server's weighted mean of the local updates
theta_0 - theta_K^(n)). A server that knows N (and the B_n) can always apply this scaling to the sum, so nothing
is granted beyond the sum. The result has batch_size = sum_n B_n, labels = the concatenation of the clients'
labels in client order when every client's labels are known (else None), bn_statistics = None (per-client batch
statistics are not revealed), defenses = the clients' defenses + ["secagg:N"], extras["num_clients"] = N (plus
the extras that all clients share, e.g. ``dp_epsilon``).

What the attacker knows: N and the total batch size (public, recorded as ``secagg:N``). Seed 002 evaluates no
sweep over N; N = 1 is refused (nothing is hidden).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ConfigError, ObservationError
from ..threat.observation import Observation


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str | None:
    """The first name on which two tensor dicts differ (keys, shape or value), or None."""
    if list(a) != list(b):
        missing = sorted(set(a) ^ set(b))
        return missing[0] if missing else "(order)"
    for k in a:
        if a[k].shape != b[k].shape or not torch.equal(a[k].detach().cpu(), b[k].detach().cpu()):
            return k
    return None


@dataclass(frozen=True)
class SecureAggregation:
    num_clients: int

    def __post_init__(self) -> None:
        if isinstance(self.num_clients, bool) or int(self.num_clients) != self.num_clients or self.num_clients < 2:
            raise ConfigError(f"secure aggregation needs num_clients >= 2 (an integer), got {self.num_clients}")

    def describe(self) -> str:
        return f"secagg:{self.num_clients}"

    def aggregate(self, observations: Sequence[Observation]) -> Observation:
        """The server's single observation of N clients' securely aggregated updates (see the module docstring)."""
        obs = list(observations)
        n = self.num_clients
        if len(obs) != n:
            raise ObservationError(f"secure aggregation over {n} clients got {len(obs)} observations")
        first = obs[0]
        for i, o in enumerate(obs[1:], start=1):
            what = None
            if o.model != first.model:
                what = f"model {o.model.to_dict()} vs {first.model.to_dict()}"
            elif o.data != first.data:
                what = f"data normalisation '{o.data.name}' vs '{first.data.name}'"
            elif (name := _same_tensors(o.parameters, first.parameters)) is not None:
                what = f"theta_0 (parameter '{name}')"
            elif (name := _same_tensors(o.buffers, first.buffers)) is not None:
                what = f"buffers (buffer '{name}')"
            elif (o.update_kind, o.local_steps, o.local_lr) != (first.update_kind, first.local_steps, first.local_lr):
                what = (f"protocol ({o.update_kind}, K={o.local_steps}, lr={o.local_lr}) vs "
                        f"({first.update_kind}, K={first.local_steps}, lr={first.local_lr})")
            elif list(o.defenses) != list(first.defenses):
                what = f"defenses {o.defenses} vs {first.defenses}"
            if what is not None:
                raise ObservationError(f"secure aggregation needs every client to have received the same round; "
                                       f"client {i} differs from client 0 in {what}")
        total = sum(o.batch_size for o in obs)
        update = {}
        for k in first.update:
            update[k] = sum((o.batch_size / total) * o.update[k] for o in obs)
        labels = None
        if all(o.labels is not None for o in obs):
            labels = torch.cat([o.labels.reshape(-1) for o in obs])
        extras = {k: v for k, v in first.extras.items()
                  if all(k in o.extras and o.extras[k] == v for o in obs[1:])}
        extras["num_clients"] = n
        return Observation(
            model=first.model, parameters={k: v.clone() for k, v in first.parameters.items()}, update=update,
            batch_size=total, data=first.data, buffers={k: v.clone() for k, v in first.buffers.items()},
            update_kind=first.update_kind, local_steps=first.local_steps, local_lr=first.local_lr, labels=labels,
            bn_statistics=None, defenses=list(first.defenses) + [self.describe()], extras=extras)


def aggregate(observations: Sequence[Observation]) -> Observation:
    """Securely aggregate all the given observations (N = their number)."""
    return SecureAggregation(len(observations)).aggregate(observations)
