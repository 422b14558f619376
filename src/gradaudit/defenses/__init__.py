"""Defenses (seed 002 sections 3 and 5; methods.md section 5).

Per-update transforms (:class:`UpdateTransform`: ``__call__(update, generator) -> update`` plus ``describe()``),
applied by the :class:`~gradaudit.threat.Client` in order to the update it shares:

* :class:`GradientPruning` (``prune:p``, ``prune-global:p``): zero the entries below the p-quantile of |g|.
* :class:`GradientClipping` (``clip:C``): scale the update by min(1, C / ||g||_2).
* :class:`GaussianNoise` (``noise:sigma``): add N(0, sigma^2) per entry.
* :class:`GradientDropout` (``dropout:p``): zero each entry with probability p.
* :class:`DPSGD` (``dpsgd:C,sigma``): per-sample clipping + Gaussian noise; a *per-sample* transform that the
  Client applies to per-sample gradients (``per_sample = True``), with its (epsilon, delta) from the RDP
  accountant in :mod:`~gradaudit.defenses.accountant`.

Defenses that are not update transforms:

* :class:`SecureAggregation` (``secagg:N``): combines N clients' updates into the one the server sees
  (:func:`gradaudit.threat.aggregate` builds that observation).
* Local aggregation is the Client's ``protocol="fedavg"`` with ``local_steps`` K (K in {1, 3, 5} in seed 002).
* A large batch is the batch-size setting (``threat.batch_size``).

Specs ("name:strength") are parsed by :func:`parse_defense`; :data:`DEFENSES` lists the names.
"""

from .accountant import compute_rdp, rdp_sampled_gaussian, rdp_to_epsilon
from .base import UpdateTransform
from .clipping import GradientClipping, global_norm
from .dpsgd import DPSGD, per_sample_gradients
from .dropout import GradientDropout
from .noise import GaussianNoise
from .pruning import GradientPruning
from .registry import DEFENSES, parse_defense
from .secure_aggregation import SecureAggregation

__all__ = [
    "UpdateTransform", "GaussianNoise", "GradientPruning", "GradientClipping", "GradientDropout", "DPSGD",
    "SecureAggregation", "per_sample_gradients", "global_norm", "compute_rdp", "rdp_sampled_gaussian",
    "rdp_to_epsilon", "DEFENSES", "parse_defense",
]
