"""The gradient-matching objective as one public part: distance + regularisers + extra terms (methods.md 2).

    J(x; a, w) = sum_d a_d D_d(u_F(x, y), u*_F) + sum_r w_r R_r(x) + sum_e e(x)

u(x, y) is the update a candidate batch would produce under the observed protocol (the FedSGD mean gradient,
or theta_0 - theta_K from K unrolled full-batch local SGD steps, with the client's momentum and weight decay:
the full-batch simplification of FedAvg; :mod:`gradaudit.attacks.matching.fedavg` models its minibatches), D_d the distances of :mod:`.distances` and R_r the
regularisers of :mod:`.regularizers`. The weights a (over distances) and w (over regularisers) are
*arguments*, so one ``torch.func.vmap`` call evaluates a whole population whose members weigh the terms
differently (the self-tuning attack's candidates, :mod:`.population`).

F is the set of parameter tensors the attack fits. By default it is every tensor; with ``holdout`` some are
left out of the fit, and the distance on them, measured but never optimised, is an out-of-sample check of a
reconstruction that uses the observation only (:mod:`.tuning`).

Besides the total, a call returns ``(own, cosine, heldout)``: the member's own weighted distance on F, the
unregularised global cosine distance over all tensors (one scale for every member), and the cosine
distance on the held-out tensors (equal to ``cosine`` when nothing is held out). The cosines, fitted or
monitored, come from one set of per-tensor statistics per evaluation (:mod:`.distances`); only distances
without a statistic form (``l2``) sweep the update again.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch.func import grad

from ...errors import ConfigError
from ...threat.local_training import LocalTraining, sgd_step
from ...threat.observation import Observation
from .distances import STATISTIC_FORMS, cosine_from_statistics, get_distance, squared_norms, tensor_statistics
from .regularizers import RegularizerContext, get_regularizer
from .victim import FunctionalVictim

#: an extra term of the objective: a function of the (normalised) candidate batch x, already weighted
ExtraTerm = Callable[[torch.Tensor], torch.Tensor]


def func_param_grad(loss, params, x, y):
    """dL/dtheta by torch.func (composable with vmap over the population)."""
    return grad(loss, has_aux=True)(params, x, y)


def autograd_param_grad(loss, params, x, y):
    """dL/dtheta by torch.autograd with create_graph (less overhead for a single member)."""
    leaves = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
    value, aux = loss(leaves, x, y)
    grads = torch.autograd.grad(value, list(leaves.values()), create_graph=True)
    return dict(zip(leaves, grads)), aux


def holdout_names(names: Sequence[str], fraction: float) -> list[str]:
    """Every k-th parameter tensor (k = round(1 / fraction)), starting from the second: a held-out set spread
    over the depth of the network, the same for every observation of one architecture."""
    if fraction <= 0:
        return []
    if not fraction < 1:
        raise ConfigError(f"holdout must be in [0, 1), got {fraction}")
    k = max(2, round(1 / fraction))
    return [n for i, n in enumerate(names) if i % k == 1]


class MatchingObjective:
    """J(x; a, w) for one observation (see the module docstring).

    Args:
        victim: the attacker's functional copy of the model (:class:`~.victim.FunctionalVictim`).
        observation: what the server received (target update, protocol).
        distances: names of the distances members may weigh (``a`` is ordered like this).
        regularizers: names of the regularisers members may weigh (``w`` is ordered like this).
        bn_targets: per BN layer (mean, var) targets of the ``bn`` regulariser.
        first_bn_weight: the first BN layer's weight in the ``bn`` regulariser.
        holdout: parameter tensors left out of the fit (see :func:`holdout_names`).
        extra: further terms added to the total (e.g. the feature-matching term).
    """

    def __init__(self, victim: FunctionalVictim, observation: Observation, *, distances: Sequence[str],
                 regularizers: Sequence[str] = (), bn_targets=(), first_bn_weight: float = 10.0,
                 holdout: Sequence[str] = (), extra: Sequence[ExtraTerm] = ()) -> None:
        device = victim.device
        self.victim = victim
        self.distance_names = list(distances)
        self.regularizer_names = list(regularizers)
        self._distances = [get_distance(d) for d in self.distance_names]
        self._regularizers = [get_regularizer(r) for r in self.regularizer_names]
        self.names = list(victim.names)
        held = set(holdout)
        unknown = held - set(self.names)
        if unknown:
            raise ConfigError(f"held-out tensor '{sorted(unknown)[0]}' is not a parameter of the model")
        self.fit_index = [i for i, n in enumerate(self.names) if n not in held]
        self.held_index = [i for i, n in enumerate(self.names) if n in held]
        if not self.fit_index:
            raise ConfigError("every parameter tensor is held out: nothing left to fit")
        self.target = [observation.update[n].to(device, torch.float32) for n in self.names]
        self.target_sq = squared_norms(self.target)  # ||g*_l||^2, once per attack
        self._forms = [STATISTIC_FORMS.get(d) for d in self.distance_names]
        self._fit_rows = None if not self.held_index else torch.tensor(self.fit_index, device=device)
        self._fit_target = [self.target[i] for i in self.fit_index]  # for distances without a statistic form
        self._held_rows = torch.tensor(self.held_index, device=device) if self.held_index else None
        self.local = observation.update_kind == "local_update"
        self.steps, self.local_lr = observation.local_steps, observation.local_lr
        self.training = None
        if self.local:  # every one of the K steps on the whole batch
            t = observation.local_training
            self.training = LocalTraining(t.lr, steps=self.steps, momentum=t.momentum, weight_decay=t.weight_decay)
        self.bn_targets = list(bn_targets)
        self.first_bn_weight = float(first_bn_weight)
        self.extra = list(extra)

    # ----------------------------------------------------------------------------------- weights
    def weights(self, distance: Mapping[str, float] | str, regularizers: Mapping[str, float],
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (a, w) vectors of one member: ``distance`` is a name (weight 1) or name -> weight."""
        dist = {distance: 1.0} if isinstance(distance, str) else dict(distance)
        for name in list(dist) + list(regularizers):
            if name not in self.distance_names and name not in self.regularizer_names:
                raise ConfigError(f"'{name}' is not a term of this objective")
        a = torch.tensor([float(dist.get(d, 0.0)) for d in self.distance_names])
        w = torch.tensor([float(regularizers.get(r, 0.0)) for r in self.regularizer_names])
        device = device or self.victim.device
        return a.to(device), w.to(device)

    # ------------------------------------------------------------------------------------ update
    def update_of(self, x: torch.Tensor, y: torch.Tensor, param_grad=func_param_grad):
        """(u(x, y) per parameter tensor, BN input statistics of the first step)."""
        victim, names, params = self.victim, self.names, self.victim.params
        if not self.local:
            g, stats = param_grad(victim.loss, params, x, y)
            return [g[n] for n in names], stats
        p, stats, buf = params, None, None
        for _ in range(self.steps):  # unrolled FedAvg local training, differentiable in x
            g, st = param_grad(victim.loss, p, x, y)
            stats = st if stats is None else stats
            p, buf = sgd_step(p, g, self.training, buf)
        return [params[n] - p[n] for n in names], stats

    # ---------------------------------------------------------------------------------- objective
    def __call__(self, x: torch.Tensor, label_param: torch.Tensor, dist_w: torch.Tensor, reg_w: torch.Tensor,
                 param_grad=func_param_grad, latent: torch.Tensor | None = None):
        """(total, (own distance, global cosine, held-out cosine)) of one member's batch ``x``."""
        y = label_param.softmax(-1) if label_param.is_floating_point() else label_param
        u, stats = self.update_of(x, y, param_grad)
        dot, sq = tensor_statistics(u, self.target)
        tsq = self.target_sq
        rows = self._fit_rows
        fit_stats = (dot, sq, tsq) if rows is None else (dot[rows], sq[rows], tsq[rows])
        own = 0
        for a, form, d in zip(dist_w, self._forms, self._distances):
            if form is not None:
                own = own + a * form(*fit_stats)
            else:
                own = own + a * d([u[i] for i in self.fit_index], self._fit_target)
        total = own
        if self._regularizers:
            ctx = RegularizerContext(bn_inputs=stats, bn_targets=self.bn_targets,
                                     first_bn_weight=self.first_bn_weight, latent=latent)
            for w, reg in zip(reg_w, self._regularizers):
                total = total + w * reg(x, ctx)
        for term in self.extra:
            total = total + term(x)
        monitor = cosine_from_statistics(dot, sq, tsq)
        if self._held_rows is not None:
            h = self._held_rows
            held = cosine_from_statistics(dot[h], sq[h], tsq[h])
        else:
            held = monitor
        return total, (own, monitor, held)


__all__ = ["ExtraTerm", "MatchingObjective", "autograd_param_grad", "func_param_grad", "holdout_names"]
