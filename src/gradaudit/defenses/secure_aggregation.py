"""Secure aggregation (Bonawitz et al. 2017; seed 002 section 3.3): the server sees only the aggregate of N updates.

Not a per-update transform: it combines the updates of N clients that all received the same model theta_0
(same architecture, parameters, buffers, protocol, K, lr and client-side defenses) into the one the server
really holds (:func:`gradaudit.threat.aggregate` builds that observation). In a sweep, ``secagg:N`` makes the
attacked client one of N, the other N-1 holding other private batches of the same size, and the attack is
scored on all N B images it would have to tell apart.

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
from .base import register_defense


@register_defense("secagg", family="secure aggregation", parameters=("N",), example="secagg:4",
                  acts_on="aggregate", strength="num_clients")
@dataclass(frozen=True)
class SecureAggregation:
    num_clients: int

    def __post_init__(self) -> None:
        if isinstance(self.num_clients, bool) or int(self.num_clients) != self.num_clients or self.num_clients < 2:
            raise ConfigError(f"secure aggregation needs num_clients >= 2 (an integer), got {self.num_clients}")

    def describe(self) -> str:
        return f"secagg:{self.num_clients}"

    def combine(self, updates: Sequence[dict[str, torch.Tensor]], batch_sizes: Sequence[int]
                ) -> dict[str, torch.Tensor]:
        """The normalised aggregate sum_n (B_n / sum_m B_m) u_n of N clients' updates (module docstring)."""
        if len(updates) != self.num_clients or len(batch_sizes) != self.num_clients:
            raise ObservationError(f"secure aggregation over {self.num_clients} clients got {len(updates)} updates")
        total = sum(batch_sizes)
        return {k: sum((b / total) * u[k] for u, b in zip(updates, batch_sizes)) for k in updates[0]}
