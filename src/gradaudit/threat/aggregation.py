"""Secure aggregation on the server's side: N clients' observations of one round become the one it sees.

The defense itself (what the server learns, and how the updates combine) is
:class:`gradaudit.defenses.SecureAggregation`; this module checks that the clients received the same round and
builds the aggregate :class:`~gradaudit.threat.observation.Observation` (batch size sum_n B_n, labels concatenated
in client order when every client's are known, no BN statistics, ``secagg:N`` appended to the defenses).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..defenses.secure_aggregation import SecureAggregation
from ..errors import ObservationError
from .observation import Observation


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str | None:
    """The first name on which two tensor dicts differ (keys, shape or value), or None."""
    if list(a) != list(b):
        missing = sorted(set(a) ^ set(b))
        return missing[0] if missing else "(order)"
    for k in a:
        if a[k].shape != b[k].shape or not torch.equal(a[k].detach().cpu(), b[k].detach().cpu()):
            return k
    return None



def aggregate(observations: Sequence[Observation], num_clients: int | None = None) -> Observation:
    """The server's single observation of N clients' securely aggregated updates (N = ``num_clients`` or the
    number of observations; see :mod:`gradaudit.defenses.secure_aggregation` for what the server sees)."""
    obs = list(observations)
    secagg = SecureAggregation(len(obs) if num_clients is None else num_clients)
    n = secagg.num_clients
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
        elif _protocol(o) != _protocol(first):
            what = f"protocol {_protocol(o)} vs {_protocol(first)}"
        elif list(o.defenses) != list(first.defenses):
            what = f"defenses {o.defenses} vs {first.defenses}"
        if what is not None:
            raise ObservationError(f"secure aggregation needs every client to have received the same round; "
                                   f"client {i} differs from client 0 in {what}")
    total = sum(o.batch_size for o in obs)
    update = secagg.combine([o.update for o in obs], [o.batch_size for o in obs])
    labels = None
    if all(o.labels is not None for o in obs):
        labels = torch.cat([o.labels.reshape(-1) for o in obs])
    extras = {k: v for k, v in first.extras.items()
              if all(k in o.extras and o.extras[k] == v for o in obs[1:])}
    extras["num_clients"] = n
    return Observation(
        model=first.model, parameters={k: v.clone() for k, v in first.parameters.items()}, update=update,
        batch_size=total, data=first.data, buffers={k: v.clone() for k, v in first.buffers.items()},
        update_kind=first.update_kind, local_steps=first.local_steps, local_lr=first.local_lr,
        local_epochs=first.local_epochs, local_batch_size=_aggregate_batch_size(obs),
        local_momentum=first.local_momentum, local_weight_decay=first.local_weight_decay, labels=labels,
        bn_statistics=None, defenses=list(first.defenses) + [secagg.describe()], extras=extras)


def _protocol(o: Observation) -> tuple:
    return (o.update_kind, o.local_steps, o.local_lr, o.local_epochs, o.local_batch_size, o.local_momentum,
            o.local_weight_decay)


def _aggregate_batch_size(obs: list[Observation]) -> int | None:
    """The aggregate seen as one client: N clients' minibatches of b side by side are minibatches of N b (exact
    in the count of steps, the server's model of it; refused where the clients' step counts would differ)."""
    first = obs[0]
    b = first.local_batch_size
    if first.update_kind != "local_update" or b is None or b >= first.batch_size:
        return b
    if any(o.batch_size != first.batch_size for o in obs) or first.batch_size % b:
        raise ObservationError("secure aggregation of minibatch FedAvg clients is modelled for clients of one "
                               f"data size divisible by the local batch size; got sizes "
                               f"{[o.batch_size for o in obs]} with local batch size {b}")
    return b * len(obs)


__all__ = ["aggregate"]
