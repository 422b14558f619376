"""The tensor method as an attack on an Observation (seed 002 section 4.2; Wang, Lee, Lei, AISTATS 2023).

The server sent :class:`gradaudit.models.malicious.WideFeatureModel` (registry name ``wide-head``): a wide layer
``wide`` whose rows ``k:width`` are random Gaussian neurons w_j ~ N(0, I), followed by a classifier whose columns
for those neurons are rank one, A[:, j] = a_j v. The shared mean gradient of those rows is

    g_j = a_j (1/B) sum_i r_i relu'(w_j . h_i) h_i,        r_i = v . dl/df(x_i),

the two-layer form of :func:`gradaudit.attacks.features.tensor.reconstruct_features`, which returns the B
features h_i (the wide layer's inputs) up to sign and scale. The attack reads from the observation only:
the random rows (from the model spec's ``width`` and ``trained_fraction``), their weights and gradients, and
a_j, the first factor of the rank-one head block (its common sign and scale do not matter: features are
recovered up to sign and scale anyway).

Centred heads. When the server centred the random neurons on a mean feature mu (biases b_j = -w_j . mu, mu in
the buffer ``feature_centre``; :meth:`WideFeatureModel.centre_features`), the bias gradient
db_j = a_j (1/B) sum_i r_i relu'(w_j . (h_i - mu)) turns the weight gradient into the two-layer form for the
centred features: g_j - db_j mu = a_j (1/B) sum_i r_i relu'(w_j . h~_i) h~_i, h~_i = h_i - mu. The tensor method
returns unit directions e_i = +-h~_i / |h~_i|; their signed lengths s_i (h~_i = s_i e_i) follow from two Stein
moments of the observation (u_j = w_j / std, g~_j = (g_j - db_j mu) / a_j, db~_j = db_j / a_j):

    m_b = (1/m) sum_j db~_j u_j   ~  sum_i alpha_i e_i,        alpha_i = r_i sign(s_i) / (B sqrt(2 pi)),
    M   = (1/m) sum_j g~_j u_j^T  ~  sum_i beta_i e_i e_i^T,   beta_i  = r_i |s_i|    / (B sqrt(2 pi)),

so s_i = beta_i / alpha_i (alpha by least squares on the e_i, beta from E^T M E = K diag(beta) K with
K = E^T E), and the features are h_i = mu + s_i e_i: sign and scale resolved, up to the moments' O(1/sqrt m)
error.

Other two-layer heads work too: pass ``layer`` (a Linear with Gaussian rows) and ``head`` (the Linear after
it, whose columns must be rank one, e.g. a single output); all rows of ``layer`` are then used.

:func:`reconstruct_observation_features` is the entry point for attacks that build on the features (the
feature-matching attack); :class:`TensorFeatureAttack` (``tensor-features``) wraps it as an
:class:`~gradaudit.attacks.base.Attack`. Its ``Reconstruction.images`` are zeros (it recovers features,
not images); the features are ``Reconstruction.features``.
"""

from __future__ import annotations

import inspect
import time

import torch

from ...errors import ConfigError
from ...threat.observation import Observation
from ...threat.threat_model import AttackThreat
from ..base import Attack, ProgressFn, Reconstruction, register_attack
from .tensor import FeatureReconstruction, reconstruct_features


def _wide_rows(obs: Observation, layer: str) -> slice:
    """The random rows of ``layer``: the wide-head layout from the spec's kwargs, else all rows."""
    rows = obs.parameters[f"{layer}.weight"].shape[0]
    if obs.model.name != "wide-head" or layer != "wide":
        return slice(0, rows)
    from ...models.malicious import WideFeatureModel, wide_layout

    defaults = {k: p.default for k, p in inspect.signature(WideFeatureModel).parameters.items()}
    kw = {**defaults, **obs.model.kwargs}
    first, stop = wide_layout(int(kw["width"]), float(kw["trained_fraction"]))
    if stop != rows:
        raise ConfigError(f"'{layer}.weight' has {rows} rows but the model spec says width={kw['width']}")
    return slice(first, stop)


def head_factor(block: torch.Tensor, rank_tol: float = 1e-3) -> torch.Tensor:
    """a [m] with block [C, m] = v a^T (v a unit vector): the first right singular factor times its value.

    Refuses a block that is not rank one (second singular value above ``rank_tol`` times the first): then
    the residual sum_c dl/df_c A_cj depends on j and the two-layer moments do not factor."""
    if block.dim() == 1:
        return block
    if block.shape[0] == 1:
        return block[0]
    _, s, vh = torch.linalg.svd(block.to(torch.float64), full_matrices=False)
    if s[0] <= 0 or (len(s) > 1 and s[1] > rank_tol * s[0]):
        ratio = float(s[1] / s[0]) if s[0] > 0 else float("inf")
        raise ConfigError(f"the head columns of the attacked neurons are not rank one (s2/s1 = {ratio:.3g}): the "
                          f"tensor method needs A[:, j] = a_j v, as model 'wide-head' sets them")
    return vh[0] * s[0]


def reconstruct_observation_features(obs: Observation, layer: str = "wide", head: str = "classifier",
                                     **kwargs) -> tuple[torch.Tensor, str]:
    """(features [B, d] unit norm, each up to sign; the name of the layer whose input they are).

    ``kwargs`` go to :func:`~gradaudit.attacks.features.tensor.reconstruct_features` (restarts, iterations,
    seed, subspace, select). See :func:`observation_feature_reconstruction` for the full result."""
    rec, name = observation_feature_reconstruction(obs, layer=layer, head=head, **kwargs)
    return rec.features, name


def observation_feature_reconstruction(obs: Observation, layer: str = "wide", head: str = "classifier",
                                       **kwargs) -> tuple[FeatureReconstruction, str]:
    """As :func:`reconstruct_observation_features`, returning the whole :class:`FeatureReconstruction`."""
    wname, hname = f"{layer}.weight", f"{head}.weight"
    for name in (wname, hname):
        if name not in obs.parameters:
            raise ConfigError(f"tensor-features needs parameter '{name}': the server must send model 'wide-head' "
                              f"(models/malicious.py) or name a two-layer head with layer=/head=; model "
                              f"'{obs.model.name}' has no such parameter")
    weight = obs.parameters[wname]
    if weight.dim() != 2:
        raise ConfigError(f"'{wname}' must be a Linear weight [width, d], got shape {tuple(weight.shape)}")
    rows = _wide_rows(obs, layer)
    block = obs.parameters[hname]
    if block.dim() != 2 or block.shape[1] != weight.shape[0]:
        raise ConfigError(f"'{hname}' [C, {weight.shape[0]}] must follow '{wname}', got {tuple(block.shape)}")
    a = head_factor(block[:, rows])
    grads = obs.gradient_estimate
    grad = grads[wname][rows]
    centre = obs.buffers.get("feature_centre") if layer == "wide" else None
    bname = f"{layer}.bias"
    if centre is None or not bool(centre.abs().max() > 0) or bname not in grads:
        rec = reconstruct_features(weight[rows], grad, a, obs.batch_size, **kwargs)
        rec.config["centred"] = False
        return rec, layer
    mu = centre.to(torch.float64)
    db = grads[bname][rows].to(torch.float64)
    centred = grad.to(torch.float64) - db[:, None] * mu[None, :]
    rec = reconstruct_features(weight[rows], centred, a, obs.batch_size, **kwargs)
    scales = centred_scales(weight[rows], centred, db, a, rec.features)
    feats = mu[None, :] + scales[:, None] * rec.features.to(torch.float64)
    rec.centre, rec.centred_features = centre.detach().clone(), rec.features
    rec.features = (feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-300)).to(torch.float32)
    rec.config.update({"centred": True, "scales": [float(v) for v in scales]})
    return rec, layer


def centred_scales(weights: torch.Tensor, gradients: torch.Tensor, bias_gradients: torch.Tensor,
                   head: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Signed lengths s_i with h~_i = s_i e_i from the Stein moments m_b and M (see the module docstring).

    weights [m, d], gradients [m, d] (already centred: g_j - db_j mu), bias_gradients [m], head [m],
    directions [B, d] (the unit e_i) -> [B]."""
    dt = torch.float64
    u = weights.to(dt)
    u = u / u.std()
    a = head.to(dt)
    keep = a.abs() > 1e-12
    u, a = u[keep], a[keep]
    g = gradients.to(dt)[keep] / a[:, None]
    b = bias_gradients.to(dt)[keep] / a
    e = directions.to(dt).T                                   # [d, B]
    m = u.shape[0]
    mb = u.T @ b / m                                          # [d]
    alpha = torch.linalg.lstsq(e, mb[:, None]).solution[:, 0]
    ge, ue = g @ e, u @ e                                     # [m, B]
    me = ge.T @ ue / m
    me = 0.5 * (me + me.T)                                    # E^T M E
    k_inv = torch.linalg.pinv(e.T @ e)
    beta = torch.diagonal(k_inv @ me @ k_inv)
    return beta / torch.where(alpha.abs() > 1e-300, alpha, torch.full_like(alpha, 1e-300))


@register_attack("tensor-features")
class TensorFeatureAttack(Attack):
    """Recover the B inputs of the wide layer with the tensor method (see the module docstring).

    Args:
        layer, head: the attacked Linear (Gaussian rows) and the Linear after it.
        restarts, iterations, subspace, select: of :func:`reconstruct_features`.
    """

    name = "tensor-features"
    threat = AttackThreat(server="malicious", models=("wide-head",), labels="ignores",
                          note="tensor decomposition of the wide head's random neurons (features, not pixels)")

    def __init__(self, layer: str = "wide", head: str = "classifier", restarts: int = 8, iterations: int = 30,
                 subspace: str = "gradients", select: str = "residual", device: str | torch.device = "cpu",
                 seed: int = 0) -> None:
        if subspace not in ("gradients", "moment") or select not in ("residual", "value"):
            raise ConfigError(f"tensor-features: subspace must be gradients|moment and select residual|value, got "
                              f"'{subspace}', '{select}'")
        if restarts < 1 or iterations < 1:
            raise ConfigError(f"tensor-features needs restarts >= 1 and iterations >= 1, got {restarts}, {iterations}")
        self.layer, self.head = layer, head
        self.options = {"restarts": int(restarts), "iterations": int(iterations), "subspace": subspace,
                        "select": select, "seed": int(seed)}
        self.device, self.seed = torch.device(device), seed

    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        t0 = time.perf_counter()
        obs = observation
        rec, layer = observation_feature_reconstruction(obs.to(self.device), self.layer, self.head, **self.options)
        if progress is not None:
            progress(1, 1, 0.0)
        c, h, w = obs.model.input_shape
        info = {"feature_layer": layer, "features_only": True, **rec.config,
                "eigenvalues": [float(e) for e in rec.eigenvalues], "strengths": [float(s) for s in rec.strengths]}
        return Reconstruction(
            images=torch.zeros(obs.batch_size, c, h, w), features=rec.features.cpu(),
            labels=None if obs.labels is None else obs.labels.detach().cpu().clone(), attack=self.name,
            iterations=self.options["iterations"], seconds=time.perf_counter() - t0,
            label_source="given" if obs.labels is not None else "none", config=info)
