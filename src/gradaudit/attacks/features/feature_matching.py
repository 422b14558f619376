"""The combined attack of seed 002 (``feature-matching``): gradient matching + TV + BN statistics + a deep image
prior + matching the features the tensor method recovered (seed 002 section 4.2, Appendix F; methods.md 4).

The server sends the wide-head model (:class:`gradaudit.models.malicious.WideFeatureModel`). From the shared
update the attack first recovers the B inputs h_i of the wide layer, up to sign and scale, with the tensor
method (:func:`~gradaudit.attacks.features.tensor_attack.reconstruct_observation_features`). It then runs the
gradient-matching engine with the images drawn by an untrained U-Net (``parameterization="dip"``, or any other
of the engine's parameterizations) and the objective

    D_rw-cos(u(x), u*) + lambda_TV TV(x) + lambda_BN R_BN(x) + lambda_F L_F(h(x), H_hat)

where h(x) is the candidate batch's input of the wide layer (one more forward pass of the victim at theta_0)
and L_F one of

* ``cosine-squared``: the seed's  sum_i (1 - cos^2(h(x_i), h_hat_i))  (squared: the sign of a recovered
  feature is unknown). The seed pairs candidate i with recovered feature i; here the pairing is not known in
  advance, so the term is its symmetric best-match (Chamfer) form,
      1/2 [ mean_i (1 - max_j c_ij) + mean_j (1 - max_i c_ij) ],   c_ij = cos^2(h(x_i), h_hat_j),
  which equals the seed's term under the best one-to-one pairing whenever the best matches are distinct, and
  whose second half keeps two candidates from settling on the same recovered feature;
* ``subspace`` (the seed's variant for large batches, where single features are recovered less reliably but
  their span is):  mean_i ||(I - P_S) h(x_i)||^2 / ||h(x_i)||^2,  S = span of the recovered features;
* ``auto``: ``cosine-squared`` up to ``subspace_above`` samples, ``subspace`` beyond.

The BN-statistics term is used when the victim has batch-norm layers and their targets are available (granted
batch statistics or the running statistics the server sent). Reference (seed 002): Adam, 10k iterations on a
GPU, the feature weight searched over a log grid; the CPU defaults here are 500 iterations, weight 0.1.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch.func import functional_call

from ...errors import ConfigError, unknown_name
from ...threat.observation import Observation
from ...threat.threat_model import AttackThreat
from ..base import ProgressFn, Reconstruction, register_attack
from ..matching.engine import GradientMatchingAttack, MatchingConfig
from .tensor_attack import reconstruct_observation_features

FEATURE_LOSSES = ("auto", "cosine-squared", "subspace")
_EPS = 1e-12


def cosine_squared_matching(h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Symmetric best-match form of sum_i (1 - cos^2(h_i, t_i)) (see the module docstring); h, targets [B, d]."""
    hn = h / h.norm(dim=1, keepdim=True).clamp_min(_EPS)
    tn = targets / targets.norm(dim=1, keepdim=True).clamp_min(_EPS)
    c = (hn @ tn.T) ** 2
    return 0.5 * ((1 - c.max(dim=1).values).mean() + (1 - c.max(dim=0).values).mean())


def subspace_residual(h: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """mean_i ||(I - Q Q^T) h_i||^2 / ||h_i||^2 for an orthonormal basis Q [d, k] of the recovered span."""
    inside = (h @ basis) @ basis.T
    return (((h - inside) ** 2).sum(1) / (h ** 2).sum(1).clamp_min(_EPS)).mean()


def orthonormal_basis(features: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Q [d, k]: an orthonormal basis of the span of the rows of ``features`` [B, d] (rank-revealing SVD)."""
    u, s, _ = torch.linalg.svd(features.T.to(torch.float64), full_matrices=False)
    k = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    if k == 0:
        raise ConfigError("the recovered features are all zero: nothing to match")
    return u[:, :k].to(features.dtype)


def layer_input(victim, layer: str) -> Callable[[dict, torch.Tensor], torch.Tensor]:
    """A pure function (params, x) -> the flattened input of module ``layer`` of the victim, [B, d].

    Runs the victim's model functionally at ``params`` (so it composes with vmap over restarts) and captures
    the input of ``layer`` with a forward pre-hook, as the victim captures its batch-norm statistics."""
    modules = dict(victim.model.named_modules())
    if layer not in modules:
        raise ConfigError(f"the victim has no module '{layer}' to match features at; modules: "
                          f"{', '.join(n for n in modules if n)}")
    store: list[torch.Tensor] = []
    modules[layer].register_forward_pre_hook(lambda m, inp: store.append(inp[0]))

    def features(params: dict, x: torch.Tensor) -> torch.Tensor:
        store.clear()
        functional_call(victim.model, (params, victim.buffers), (x,))
        out = store[-1]
        store.clear()
        return out.flatten(1)

    return features


@register_attack("feature-matching")
class FeatureMatchingAttack(GradientMatchingAttack):
    """The seed-002 combined attack: see the module docstring.

    Args:
        feature_weight: lambda_F. feature_loss: "auto", "cosine-squared" or "subspace";
            subspace_above: the batch size above which "auto" uses the subspace term.
        layer, head: the wide layer whose inputs are recovered and matched, and the Linear after it.
        tensor_restarts, tensor_iterations: of the tensor method (restarts of its power iteration, sweeps).
        bn_weight: weight of the BN-statistics prior, used when the victim has batch norm (0: never).
        tv: weight of total variation. distance, parameterization, iterations, lr, restarts, labels,
            schedule, signed: of the gradient-matching engine (:class:`MatchingConfig`).
    """

    name = "feature-matching"
    threat = AttackThreat(server="malicious", models=("wide-head",), labels="uses",
                          note="matches the features the wide head's gradient reveals")

    def __init__(self, feature_weight: float = 0.1, feature_loss: str = "auto", subspace_above: int = 8,
                 layer: str = "wide", head: str = "classifier", tensor_restarts: int = 8,
                 tensor_iterations: int = 30, bn_weight: float = 1e-3, tv: float = 1e-4,
                 distance: str = "reweighted-cosine", parameterization: str = "dip", iterations: int = 500,
                 lr: float = 1e-2, restarts: int = 1, labels: str = "auto", schedule: str = "multistep",
                 signed: bool = False, device: str | torch.device = "cpu", seed: int = 0) -> None:
        if feature_loss not in FEATURE_LOSSES:
            raise unknown_name("feature loss", feature_loss, FEATURE_LOSSES)
        if not all(math.isfinite(w) and w >= 0 for w in (feature_weight, bn_weight, tv)):
            raise ConfigError(f"feature-matching weights must be >= 0, got feature_weight={feature_weight}, "
                              f"bn_weight={bn_weight}, tv={tv}")
        if subspace_above < 1 or tensor_restarts < 1 or tensor_iterations < 1:
            raise ConfigError("subspace_above, tensor_restarts and tensor_iterations must be >= 1")
        if parameterization not in ("pixels", "dip"):
            raise ConfigError(f"feature-matching draws images from pixels or a deep image prior ('pixels' | "
                              f"'dip'), got '{parameterization}'")
        config = MatchingConfig(distance=distance, regularizers={"tv": float(tv)} if tv > 0 else {},
                                optimizer="adam", lr=lr, signed=signed, iterations=iterations, restarts=restarts,
                                schedule=schedule, labels=labels, parameterization=parameterization)
        super().__init__(config, device=device, seed=seed, name=self.name)
        self.feature_weight, self.feature_loss, self.subspace_above = float(feature_weight), feature_loss, \
            int(subspace_above)
        self.layer, self.head = layer, head
        self.tensor_options = {"restarts": int(tensor_restarts), "iterations": int(tensor_iterations),
                               "seed": int(seed)}
        self.bn_weight = float(bn_weight)
        self._targets: torch.Tensor | None = None

    def loss_kind(self, batch_size: int) -> str:
        if self.feature_loss != "auto":
            return self.feature_loss
        return "cosine-squared" if batch_size <= self.subspace_above else "subspace"

    # the engine's public set-up hooks: the BN prior when the victim has BN, and the feature term
    def extra_regularizers(self, obs: Observation, victim) -> dict[str, float]:
        if self.bn_weight > 0 and victim.bn_layers:
            if obs.bn_statistics is not None or victim.running_statistics(obs):
                return {"bn": self.bn_weight}
        return {}

    def objective_terms(self, obs: Observation, victim) -> list:
        if self._targets is None or self.feature_weight == 0:
            return []
        features = layer_input(victim, self.layer)
        params = victim.params
        kind = self.loss_kind(obs.batch_size)
        targets = self._targets.to(self.device, torch.float32)
        if kind == "subspace":
            basis = orthonormal_basis(targets)
            term = lambda h: subspace_residual(h, basis)  # noqa: E731
        else:
            term = lambda h: cosine_squared_matching(h, targets)  # noqa: E731
        weight = self.feature_weight
        return [lambda x: weight * term(features(params, x))]

    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        t0 = time.perf_counter()
        features, layer = reconstruct_observation_features(observation.to(self.device), layer=self.layer,
                                                           head=self.head, **self.tensor_options)
        self._targets = features
        try:
            rec = super().reconstruct(observation, progress)
        finally:
            self._targets = None
        rec.features = features.detach().cpu()
        rec.seconds = time.perf_counter() - t0
        rec.config = {**rec.config, "feature_layer": layer,
                      "feature_loss": self.loss_kind(observation.batch_size), "feature_weight": self.feature_weight,
                      "bn_weight": self.bn_weight, "tensor": self.tensor_options}
        return rec

