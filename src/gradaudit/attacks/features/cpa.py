"""Cocktail Party Attack (Kariyappa, Guo, Maeng, Xiong, Suh, Qureshi, Lee; ICML 2023): the gradient of a fully
connected layer is a linear mixture of the batch's inputs, so blind source separation (ICA) unmixes it.

For a first layer z = W x + b on the flattened (normalised) input, the mean gradient is

    dW = (1/B) sum_i delta_i x_i^T   [m, N],        db = (1/B) sum_i delta_i   [m],

with delta_i = dL/dz_i. Each of the m rows of dW is a mixture of the B sources x_i with mixing weights
delta_ri / B: an instantaneous linear mixing problem ("m microphones, B speakers, N time samples").

Algorithm (the paper's, from its reference code, plus one prior of ours marked below):

1. centre every row of dW over its N entries (mu_r = its mean) and whiten with the top-B principal
   components of the centred rows: C = G_c G_c^T / (N - 1) = E diag(lambda) E^T, Q = diag(lambda_B)^-1/2 E_B^T
   [B, m], Z = Q G_c [B, N] (rows uncorrelated, unit variance);
2. learn an unmixing matrix U [B, B] from U = I; its rows are renormalised to unit length at every step (U_n)
   and the estimated (centred, unit-variance) sources are S = U_n Z. Minimise with Adam

       L(U) = - mean_k J(S_k),   J(s) = (mean_p log cosh s_p - E log cosh nu)^2, nu ~ N(0, 1)   (negentropy)
              + decor * mean_kl ( exp(T |U_n U_n^T|_kl) - 1 )                              (decorrelation)
              + tv * TV(S)                                         (total variation of the unmixed images)
              + box * mean_kp dist(y_kp, [0, kappa_k])^2           (valid pixel range; ours, see below)

3. resolve the sign and scale of every recovered x_hat_k = a_k^T dW (a_k = Q^T U_n[k]), which ICA leaves free,
   and map to pixels x * std + mean (the observation's normalisation).

Sign and scale (``scale=``):

* ``"bias"`` (default when the layer has a bias): the same combination of the bias gradient,
  kappa_k = a_k^T db = (1/B) sum_i (a_k . delta_i), is the mixture's total weight: the augmented sources are
  [x_i, 1]. If a_k isolates sample i, a_k^T dW = kappa x_i and a_k^T db = kappa, so x_i = a_k^T dW / kappa:
  sign and scale exactly, from the observation alone (the identity behind Robbing the Fed's dW/db). Used when
  |kappa_k| > ``bias_rtol`` * max_k |kappa_k|; otherwise that component falls back to ``"range"``;
* ``"range"`` (no bias needed; the reference code's min-max normalisation plus a sign rule): divide x_hat_k by
  its standard deviation (normalised inputs have unit variance), choose the sign whose pixel image has more
  pixels inside [0, 1] (best fits the valid range), then min-max scale to [0, 1]. A heuristic.

The box prior (ours; not in the paper). With the bias, every true source satisfies
0 <= std * x_i + mean <= 1 per pixel, i.e. for the unnormalised combination, y = std * x_hat + mean * kappa lies
between 0 and kappa. The penalty is the squared distance of y to that interval (smooth in U, no division by
kappa). It removes the main failure of plain negentropy on natural photos: a *difference* of two correlated
images (kappa ~ 0) is sparser, hence more non-Gaussian, than either image, but leaves the box at once.
``box=0`` gives the paper's objective.

Hyper-parameters. The reference runs Adam lr 1e-3 for ~25k iterations on a GPU. On a CPU we use lr 0.01 for
1500 iterations (5-13 s at B=32, N=3072 on a shared 2-core machine), from U = I. decor = 1e-3 and T = 5: the
embedded photos (8 crops of each of 8 photos) are strongly correlated, so the true unmixing rows are far from
orthogonal (|cos| up to 0.77) and a strong decorrelation weight pins U to a wrong, orthogonal solution;
tv = 0.01 and box = 1, in units of the unit-variance sources. Chosen by a small sweep on one batch of 32
embedded photos through the MLP-256 (fraction at PSNR >= 15 dB, 1500 steps): negentropy + decorrelation 1
(the paper's terms) 0.09; decor 1e-3..1e-4 alone 0.16-0.22; + tv 0.01 0.34; + box 1 alone 0.25;
tv 0.01 + box 1 0.50-0.56 (box 10: 0.50; tv 0.03: 0.41; lr 0.03: 0.44; 4000 steps: 0.59). FastICA
(symmetric, log cosh) on the same batch: 0.22. Over three batches the defaults give 0.41-0.50 at
PSNR >= 15 dB (0.44-0.56 at PSNR >= 15 or SSIM >= 0.5; tests/attacks/test_cpa.py).

Mixing refinement (ours; ``refine`` steps, default 30, ``refine_ridge`` 1; :func:`refine_mixing`). The paper
leaves the mixing matrix free, but it is not: sample i enters the weight gradient with
delta_i = dl(f(x_i), y_i)/dz_i, which the server can compute for any candidate image from theta_0. Starting from
the unmixed images it alternates (a) the predicted mixing column of every candidate, for the label that best
fits the mixing the current images imply (the label multiset assigned by the Hungarian method when the labels
are known), and (b) the images given those columns by least squares with a ridge towards the current images,
clamped to [0, 1]; the true batch is a fixed point. B=32, MLP-256, embedded photos, fraction at PSNR >= 15 dB
(unmixing alone: 0.50/0.41/0.41 on batches 0-2, median 14.1-14.9 dB):

    refine 10, no ridge       0.88/0.88/0.81   (batches 3-5: 0.97/0.91/0.81; labels unknown 0.78/0.81/0.81)
    refine 30, ridge 1        0.91/0.94/1.00, median 19.1-23.5 dB   (batches 3-5: 0.88/0.88/1.00;
                              labels unknown, argmax per component: 0.84/0.91/0.88)

At B=64 (all 64 photos, every crop of every photo in one batch) plain least squares hurt (0.41 -> 0.31: nearly
equal columns make it ill-conditioned); the ridge fixes it (ridge 0.1: 0.50, 1: 0.63-0.66, 3 with 30 steps:
0.67). Costs +2-3 s at B=32. It assumes samples do not interact in the forward pass (no batch norm), as in the
MLP, or after the attacked layer of a conv net; ``refine=0`` gives the paper's attack.

Re-tuning of the unmixing alone (``refine=0``; this CPU, load 4-10; fraction of a B=32 batch at PSNR >= 15 dB after the MSE assignment, batches
0/1/2): defaults 0.50/0.41/0.41 (batches 3/4/5: 0.50/0.59/0.50; six-batch mean 0.49); 4000 steps
0.53/0.44/0.31; lr 0.02 x 3000 steps 0.50/0.50/0.53 but 0.47/0.59/0.41 on batches 3-5; temperature 10
0.41/0.59/0.47; decor 0.01 0.28/0.53/0.38; tv 0.005 0.41/0.50/0.41; box 3 0.47/0.44/0.41; tv 0.02 + box 3
0.44/0.53/0.47; 3 restarts (lowest loss kept) identical to 1. No setting beat the defaults beyond the
one-image (0.03) noise of a batch consistently, so they stay. The order-free fraction (some reconstruction of
each photo at >= 15 dB) is 0.50-0.62: blends of correlated crops, not the assignment, limit the score.

Conv nets (Kariyappa et al. section 4.3). When no FC layer takes the flattened image, CPA attacks the network's
first fully connected layer (``fc`` of 'convnet' / 'lenet' / 'resnet18', ``wide`` of 'wide-head'): its weight
gradient mixes the B *features* h_i entering it. The same unmixing runs without TV and with a non-negativity
prior in place of the box (those features follow a ReLU and pooling: ``nonneg`` * mean relu(-h)^2 on the
bias-scaled unmixed rows); sign and scale come from the bias gradient exactly as for images. The features are
then inverted to images through the backbone (:func:`gradaudit.attacks.features.inversion.invert_features`:
1 - cos(h(x_k), h_hat_k) + ``invert_tv`` TV, Adam lr ``invert_lr``, ``invert_iterations`` steps, pixels clamped
to [0, 1]). Needs m >= B units in that layer (a 'convnet' on 8 classes: B <= 7, since the rows of a
softmax layer's gradient sum to zero). The mixing refinement (below) runs on the features too, feeding the
candidates straight into the layer. Measured on embedded photos, ConvNet width 32 norm none, batches 0 / 1:

    B=6, 'convnet' (fc, 8 rows)       refine=0: feature error 0.39 / 0.32, mean PSNR 15.5 / 13.1 dB
                                      refine=30: feature error 0.31 / 0.16, mean PSNR 13.9 / 15.7 dB
    B=8, 'wide-head' (4096 units)     refine=0: feature error 0.28, PSNR 8.6-23.7, mean 16.7 dB (batch 0)
                                      refine=30: feature error 0.05, PSNR 15.2-23.8, mean 19.4 dB

(invert_tv 0.1; 0.02 gave 14.9 / 12.9 on the first row). With few rows (8) the refinement is a mixed
blessing; with a wide layer it makes the features nearly exact. A feature left as a blend inverts to 7-10 dB.

Limits. ICA assumes independent sources; correlated images (crops of one photo, one class of a clothing set)
are recovered as blends. Quality is approximate (typically 13-28 dB PSNR for the recovered images), never
exact like Robbing the Fed.
"""

from __future__ import annotations

import math
import time

import torch

from ...errors import ConfigError
from ...threat.observation import Observation
from ...threat.threat_model import AttackThreat
from ..base import Attack, ProgressFn, Reconstruction, register_attack
from ...models.registry import build_model
from .inversion import invert_features
from ..matching.regularizers import total_variation

#: E[log cosh(nu)] for nu ~ N(0, 1) (numerical integral); negentropy compares against it
LOGCOSH_GAUSS = 0.3745672075


def whiten(rows: torch.Tensor, k: int, eps: float = 1e-12, dense_limit: int = 1024,
           iterations: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre each row of ``rows`` [m, N] over its N entries, and whiten with the top-``k`` components.

    Returns (Z [k, N] whitened centred rows, Q [k, m] the whitening matrix, mu [m, 1] the row means), so that
    Z = Q (rows - mu) and Z Z^T / (N - 1) = I.
    """
    mu = rows.mean(dim=1, keepdim=True)
    centred = rows - mu
    scale = max(rows.shape[1] - 1, 1)
    if rows.shape[0] > dense_limit:
        # many units (a conv net's wide FC layer): the top-k eigenvectors of the m x m covariance by a randomised
        # range finder on the centred rows, O(m N k) per pass instead of the O(m^3) of a full eigh
        gen = torch.Generator().manual_seed(0)
        p = min(rows.shape[0], k + 10)
        basis = torch.randn(rows.shape[1], p, generator=gen, dtype=rows.dtype).to(rows.device)
        basis, _ = torch.linalg.qr(centred @ basis)
        for _ in range(iterations):
            basis, _ = torch.linalg.qr(centred @ (centred.T @ basis))
        small = centred.T @ basis                                  # [N, p]
        evals, evecs = torch.linalg.eigh(small.T @ small / scale)
        top = torch.argsort(evals, descending=True)[:k]
        vecs = basis @ evecs[:, top]
    else:
        evals, evecs = torch.linalg.eigh(centred @ centred.T / scale)
        top = torch.argsort(evals, descending=True)[:k]
        vecs = evecs[:, top]
    lam = evals[top].clamp_min(eps)
    q = vecs.T / lam.sqrt()[:, None]
    return q @ centred, q, mu


def negentropy(sources: torch.Tensor) -> torch.Tensor:
    """Log-cosh negentropy approximation per row, J = (E log cosh s - E log cosh nu)^2, for unit-variance rows.

    Numerically stable log cosh(s) = |s| + log1p(exp(-2|s|)) - log 2.
    """
    a = sources.abs()
    logcosh = a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)
    return (logcosh.mean(dim=-1) - LOGCOSH_GAUSS) ** 2


def default_layer(obs: Observation) -> str:
    """The layer CPA attacks: the first FC layer on the flattened input if there is one (``fc1`` of 'mlp'),
    else the first fully connected layer of the network (a conv net's first FC layer; ``wide`` of 'wide-head',
    ``fc`` of 'convnet'), whose input features are then inverted to images."""
    try:
        return first_linear_layer(obs)
    except ConfigError:
        pass
    for name, p in obs.parameters.items():
        if name.endswith(".weight") and p.dim() == 2:
            return name[: -len(".weight")]
    raise ConfigError(f"cpa needs a fully connected layer; model '{obs.model.name}' has none")


def first_linear_layer(obs: Observation) -> str:
    """Name prefix of the first 2-D weight whose input is the flattened image (``fc1`` in model 'mlp')."""
    n = math.prod(obs.model.input_shape)
    for name, p in obs.parameters.items():
        if name.endswith(".weight") and p.dim() == 2 and p.shape[1] == n:
            return name[: -len(".weight")]
    raise ConfigError(f"cpa needs a fully connected layer on the flattened input ({n} inputs, e.g. model 'mlp'); "
                      f"model '{obs.model.name}' has none")


@register_attack("cpa")
class CocktailPartyAttack(Attack):
    """Unmix the first FC layer's weight gradient into the B private inputs (see the module docstring).

    Args:
        iterations, lr: Adam steps on U and their learning rate.
        decor, temperature: weight and temperature T of the decorrelation penalty mean(exp(T |U U^T|) - 1).
        tv: weight of total variation on the unmixed unit-variance sources.
        box: weight of the valid-pixel-range prior (needs the layer's bias; 0 = the paper's objective).
        scale: "bias" (exact sign and scale from the bias gradient; falls back to "range" per component) or
            "range".
        layer: parameter prefix of the attacked Linear layer (None: the first one on the flattened input).
        bias_rtol: a component uses "bias" scaling when |a^T db| > bias_rtol * max_k |a_k^T db|.
        nonneg: weight of the non-negativity prior on unmixed features (conv nets).
        invert_iterations, invert_lr, invert_tv: the feature inversion of conv nets (Adam steps, lr, TV weight).
        restarts: unmixing runs (from U = I, then random orthogonal U); the lowest final loss is kept.
        refine: alternating least-squares steps of the mixing refinement (ours; see the module docstring;
            0 = the paper's attack).
    """

    name = "cpa"
    threat = AttackThreat(server="honest", labels="ignores",
                          note="independent component analysis of a fully connected layer's gradient")

    def __init__(self, iterations: int = 1500, lr: float = 0.01, decor: float = 1e-3, temperature: float = 5.0,
                 tv: float = 1e-2, box: float = 1.0, scale: str = "bias", layer: str | None = None,
                 bias_rtol: float = 1e-3, nonneg: float = 1.0, invert_iterations: int = 600,
                 invert_lr: float = 0.05, invert_tv: float = 0.1, restarts: int = 1, refine: int = 30,
                 refine_ridge: float = 1.0,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        if scale not in ("bias", "range"):
            raise ConfigError(f"cpa scale must be 'bias' or 'range', got '{scale}'")
        if iterations < 0 or not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"cpa needs iterations >= 0 and lr > 0, got {iterations}, {lr}")
        self.iterations, self.lr, self.decor, self.temperature = int(iterations), float(lr), float(decor), \
            float(temperature)
        self.tv, self.box, self.scale, self.layer = float(tv), float(box), scale, layer
        self.bias_rtol = float(bias_rtol)
        if invert_iterations < 0 or not (math.isfinite(invert_lr) and invert_lr > 0):
            raise ConfigError(f"cpa needs invert_iterations >= 0 and invert_lr > 0, got {invert_iterations}, "
                              f"{invert_lr}")
        if restarts < 1:
            raise ConfigError(f"cpa needs restarts >= 1, got {restarts}")
        self.restarts = int(restarts)
        if refine < 0:
            raise ConfigError(f"cpa needs refine >= 0, got {refine}")
        if not refine_ridge >= 0:
            raise ConfigError(f"cpa needs refine_ridge >= 0, got {refine_ridge}")
        self.refine, self.refine_ridge = int(refine), float(refine_ridge)
        self.nonneg, self.invert_iterations = float(nonneg), int(invert_iterations)
        self.invert_lr, self.invert_tv = float(invert_lr), float(invert_tv)
        self.device, self.seed = torch.device(device), seed

    def reconstruct(self, observation: Observation, progress: ProgressFn | None = None) -> Reconstruction:
        t0 = time.perf_counter()
        obs = observation
        layer = self.layer or default_layer(obs)
        grads = obs.gradient_estimate
        if f"{layer}.weight" not in grads:
            raise ConfigError(f"cpa: the observation has no parameter '{layer}.weight'")
        g = grads[f"{layer}.weight"].to(self.device, torch.float64)       # [m, N]
        gb = grads.get(f"{layer}.bias")
        gb = None if gb is None else gb.to(self.device, torch.float64)     # [m]
        batch = obs.batch_size
        m, n = g.shape
        if m < batch:
            raise ConfigError(f"cpa needs at least as many units as samples: layer '{layer}' has {m} < B={batch}")
        on_input = n == math.prod(obs.model.input_shape)
        z, q, mu = whiten(g, batch)
        z32, offset = z.to(torch.float32), (q @ mu).to(torch.float32)       # offset [B, 1]: the centring undone
        kappa0 = None if gb is None else (q @ gb).to(torch.float32)        # [B]: bias weight of each Z row
        prior = self._image_prior(obs, batch, offset, kappa0) if on_input else self._feature_prior(offset, kappa0)
        un, loss_value, history = self._unmix(z32, batch, prior, progress)
        with torch.no_grad():
            a = un.to(torch.float64) @ q                                    # [B, m] combinations of the rows
            x_hat = a @ g                                                   # [B, N] uncentred, up to scale
            weight = None if gb is None else a @ gb
        info = {"layer": layer, "iterations": self.iterations, "lr": self.lr, "decor": self.decor,
                "temperature": self.temperature, "tv": self.tv, "box": self.box if gb is not None else 0.0,
                "scale": self.scale, "seed": self.seed, "optimizer": "adam", "restarts": self.restarts,
                "refine": self.refine,
                "refine_ridge": self.refine_ridge, "target": "input" if on_input else "features"}
        features = None
        if on_input:
            images, used_bias = self._resolve(x_hat, weight, obs)
            if self.refine > 0:
                images, residuals = refine_mixing(obs, layer, images, g, self.refine, device=self.device,
                                                  ridge=self.refine_ridge)
                info["refine_residuals"] = residuals
        else:
            features, used_bias = self._resolve_features(x_hat, weight)
            if self.refine > 0:
                features, residuals = refine_features(obs, layer, features, g, self.refine, device=self.device,
                                                      ridge=self.refine_ridge)
                info["refine_residuals"] = residuals
            images, inv_loss = invert_features(obs, layer, features, iterations=self.invert_iterations,
                                               lr=self.invert_lr, tv=self.invert_tv, seed=self.seed,
                                               device=self.device)
            info.update({"nonneg": self.nonneg, "invert_iterations": self.invert_iterations,
                         "invert_lr": self.invert_lr, "invert_tv": self.invert_tv, "inversion_loss": inv_loss})
            features = features.to(torch.float32).cpu()
        info["bias_scaled"] = int(used_bias.sum())
        return Reconstruction(
            images=images.to(torch.float32).cpu(), features=features,
            labels=None if obs.labels is None else obs.labels.detach().cpu().clone(), attack=self.name,
            matching_loss=loss_value, restart_losses=[loss_value], history=history, iterations=self.iterations,
            seconds=time.perf_counter() - t0, label_source="given" if obs.labels is not None else "none",
            config=info)

    def _image_prior(self, obs: Observation, batch: int, offset: torch.Tensor, kappa0: torch.Tensor | None):
        """TV + box prior on unmixed images (see the module docstring)."""
        c, h, w = obs.model.input_shape
        mean = torch.tensor(obs.data.mean, device=self.device).view(1, c, 1, 1)
        std = torch.tensor(obs.data.std, device=self.device).view(1, c, 1, 1)

        def prior(sources: torch.Tensor, un: torch.Tensor) -> torch.Tensor:
            loss = sources.new_zeros(())
            if self.tv > 0:  # TV is blind to the per-image offset, so the centred sources suffice
                loss = loss + self.tv * total_variation(sources.view(batch, c, h, w))
            if self.box > 0 and kappa0 is not None:
                kappa = (un @ kappa0).view(batch, 1, 1, 1)
                y = std * (sources + un @ offset).view(batch, c, h, w) + mean * kappa
                sign = torch.sign(kappa)
                loss = loss + self.box * (torch.relu(-sign * y) ** 2 + torch.relu(sign * (y - kappa)) ** 2).mean()
            return loss

        return prior

    def _feature_prior(self, offset: torch.Tensor, kappa0: torch.Tensor | None):
        """Non-negativity of the unmixed features (inputs of an FC layer after a ReLU / pooling): the feature
        x_hat / kappa >= 0, i.e. sign(kappa) (sources + offset) >= 0 (the box prior's analogue)."""

        def prior(sources: torch.Tensor, un: torch.Tensor) -> torch.Tensor:
            if self.nonneg <= 0 or kappa0 is None:
                return sources.new_zeros(())
            sign = torch.sign(un @ kappa0)[:, None]
            return self.nonneg * (torch.relu(-sign * (sources + un @ offset)) ** 2).mean()

        return prior

    def _unmix(self, z32: torch.Tensor, batch: int, prior, progress: ProgressFn | None):
        """Adam on U from I (then from random orthogonal U for further restarts): -negentropy + decorrelation +
        prior; returns the restart with the lowest final loss as (U_n, final loss, history)."""
        best = None
        gen = torch.Generator().manual_seed(self.seed)
        for r in range(self.restarts):
            start = torch.eye(batch) if r == 0 else torch.linalg.qr(torch.randn(batch, batch, generator=gen))[0]
            run = self._unmix_once(z32, batch, prior, progress, start.to(self.device))
            if best is None or run[1] < best[1]:
                best = run
        return best

    def _unmix_once(self, z32: torch.Tensor, batch: int, prior, progress: ProgressFn | None,
                    start: torch.Tensor):
        u = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=self.lr)
        history: list[tuple[int, float]] = []
        loss_value = float("nan")
        every = max(1, self.iterations // 20)
        for it in range(self.iterations):
            opt.zero_grad(set_to_none=True)
            un = u / (u.norm(dim=1, keepdim=True) + 1e-12)
            sources = un @ z32
            loss = -negentropy(sources).mean()
            if self.decor > 0:
                loss = loss + self.decor * (torch.exp(self.temperature * (un @ un.T).abs()) - 1).mean()
            loss = loss + prior(sources, un)
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
            if it % every == 0 or it == self.iterations - 1:
                history.append((it + 1, loss_value))
                if progress is not None:
                    progress(it + 1, self.iterations, loss_value)
        with torch.no_grad():
            un = u / (u.norm(dim=1, keepdim=True) + 1e-12)
        return un.detach(), loss_value, history

    def _resolve_features(self, x_hat: torch.Tensor, weight: torch.Tensor | None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sign and scale of unmixed features: x_hat / (a^T db) (exact, as for images), else unit norm with the
        sign that makes more entries non-negative."""
        unit = x_hat / (x_hat.norm(dim=1, keepdim=True) + 1e-300)
        sign = torch.where((unit >= 0).double().mean(1) >= (unit <= 0).double().mean(1), 1.0, -1.0)
        ranged = unit * sign[:, None]
        used = torch.zeros(x_hat.shape[0], dtype=torch.bool, device=x_hat.device)
        if self.scale == "range" or weight is None:
            return ranged, used
        used = weight.abs() > self.bias_rtol * weight.abs().max()
        exact = x_hat / torch.where(used, weight, torch.ones_like(weight))[:, None]
        return torch.where(used[:, None], exact, ranged), used

    def _resolve(self, x_hat: torch.Tensor, weight: torch.Tensor | None,
                 obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        """Fix sign and scale of each unmixed row; return pixel images [B, C, H, W] in [0, 1] and a bias mask."""
        c, h, w = obs.model.input_shape
        mean = torch.tensor(obs.data.mean, dtype=x_hat.dtype, device=x_hat.device).view(1, c, 1, 1)
        std = torch.tensor(obs.data.std, dtype=x_hat.dtype, device=x_hat.device).view(1, c, 1, 1)
        batch = x_hat.shape[0]
        # "range": unit standard deviation, the sign that puts more pixels in [0, 1], then min-max to [0, 1]
        unit = x_hat / (x_hat.std(1, keepdim=True) + 1e-12)
        pos = unit.view(batch, c, h, w) * std + mean
        neg = -unit.view(batch, c, h, w) * std + mean
        fits = lambda p: ((p >= 0) & (p <= 1)).flatten(1).float().mean(1)  # noqa: E731
        sign = torch.where(fits(pos) >= fits(neg), 1.0, -1.0).to(x_hat.dtype)
        ranged = (sign.view(-1, 1, 1, 1) * unit.view(batch, c, h, w)) * std + mean
        lo = ranged.flatten(1).min(1).values.view(-1, 1, 1, 1)
        hi = ranged.flatten(1).max(1).values.view(-1, 1, 1, 1)
        ranged = (ranged - lo) / (hi - lo + 1e-12)
        used = torch.zeros(batch, dtype=torch.bool, device=x_hat.device)
        if self.scale == "range" or weight is None:
            return ranged, used
        used = weight.abs() > self.bias_rtol * weight.abs().max()
        exact = (x_hat / torch.where(used, weight, torch.ones_like(weight))[:, None]).view(batch, c, h, w)
        exact = (exact * std + mean).clamp(0, 1)
        return torch.where(used.view(-1, 1, 1, 1), exact, ranged), used


def refine_mixing(obs: Observation, layer: str, images: torch.Tensor, weight_gradient: torch.Tensor, steps: int,
                  device: torch.device | str = "cpu", ridge: float = 0.0) -> tuple[torch.Tensor, list[float]]:
    """Mixing refinement (ours): alternate predicted mixing columns and least-squares sources.

    The mixing weights are not arbitrary: for the layer z = W x + b, sample i enters dW = (1/B) sum_i delta_i x_i^T
    with delta_i = dl(f(x_i), y_i)/dz_i, which the server can compute for any candidate x (it has theta_0).
    Starting from the unmixed images, each step

    1. runs the victim on the candidates x_k and forms, for every class c, delta_k(c) = J_k^T (p_k - e_c)
       (J_k = dlogits/dz at x_k, p_k = softmax), one backward pass per class;
    2. picks each component's label: with the private labels known, the assignment of the label multiset to
       components maximising sum_k cos(delta_k(y_k), D_k), D = B dW X^+ the mixing the current sources imply
       (Hungarian); without labels, argmax_c per component;
    3. solves dW = (1/B) D_hat X for X by least squares (D_hat [m, B], m >= B) and clamps X to the pixel box.

    With all columns right the true batch is a fixed point (exact). Samples are assumed independent in the
    forward pass (no batch norm before the logits), as in an MLP. Returns (images [B, C, H, W] in [0, 1], the
    relative residual |D_hat X / B - dW| / |dW| after each step).
    """
    c, h, w = obs.model.input_shape
    mean = torch.tensor(obs.data.mean, dtype=torch.float64, device=device).view(1, c, 1, 1)
    std = torch.tensor(obs.data.std, dtype=torch.float64, device=device).view(1, c, 1, 1)
    lo, hi = ((0 - mean) / std).expand(1, c, h, w).flatten(1), ((1 - mean) / std).expand(1, c, h, w).flatten(1)
    x = ((images.to(device, torch.float64) - mean) / std).flatten(1)
    x, residuals = _refine_sources(obs, layer, x, weight_gradient, steps, ridge, lo, hi, False, device)
    out = (x.view(-1, c, h, w) * std + mean).clamp(0, 1)
    return out.to(torch.float32).cpu(), residuals


def refine_features(obs: Observation, layer: str, features: torch.Tensor, weight_gradient: torch.Tensor,
                    steps: int, device: torch.device | str = "cpu", ridge: float = 1.0
                    ) -> tuple[torch.Tensor, list[float]]:
    """:func:`refine_mixing` for the features entering a deeper FC layer (conv nets): the candidate features are
    fed to ``layer`` directly (a forward pre-hook replaces its input; everything before it is skipped) and kept
    non-negative (they follow a ReLU / pooling). Returns (features [B, d], residuals)."""
    x = features.to(device, torch.float64)
    return _refine_sources(obs, layer, x, weight_gradient, steps, ridge, torch.zeros_like(x[:1]),
                           torch.full_like(x[:1], float("inf")), True, device)


def _refine_sources(obs: Observation, layer: str, x: torch.Tensor, weight_gradient: torch.Tensor, steps: int,
                    ridge: float, lo: torch.Tensor, hi: torch.Tensor, at_layer: bool, device
                    ) -> tuple[torch.Tensor, list[float]]:
    """The alternating refinement on sources x [B, N] (normalised images, or the layer's input features)."""
    from scipy.optimize import linear_sum_assignment

    model = build_model(obs.model)
    obs.check_model(model)
    model.load_state_dict({**obs.parameters, **obs.buffers}, strict=False)
    model = model.to(device).double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    captured: list[torch.Tensor] = []
    module = model.get_submodule(layer)
    module.register_forward_hook(lambda m, inp, out: captured.append(out))
    batch = x.shape[0]
    source: list[torch.Tensor] = []
    if at_layer:  # feed the candidate features to the layer itself
        module.register_forward_pre_hook(lambda m, inp: (source[0],))
    c, h, w = obs.model.input_shape
    dw = weight_gradient.to(device, torch.float64)
    labels = None if obs.labels is None else obs.labels.to(device)
    residuals: list[float] = []
    for _ in range(steps):
        captured.clear()
        source[:] = [x.clone().requires_grad_(True)]  # so that z is part of a graph
        inp = torch.zeros(batch, c, h, w, dtype=torch.float64, device=device) if at_layer else \
            source[0].view(batch, c, h, w)
        with torch.enable_grad():
            logits = model(inp)
            z = captured[0]
            classes = logits.shape[1]
            jac = torch.stack([torch.autograd.grad(logits[:, k].sum(), z, retain_graph=k < classes - 1)[0]
                               for k in range(classes)], 1)                     # [B, C, m]
        prob = torch.softmax(logits.detach(), 1)
        deltas = torch.einsum("bk,bkm->bm", prob, jac)[:, None, :] - jac          # [B, C, m]: J^T (p - e_c)
        implied = batch * dw @ torch.linalg.pinv(x)                                # [m, B]
        cos = torch.nn.functional.cosine_similarity(deltas, implied.T[:, None, :], dim=2)   # [B, C]
        if labels is not None:
            rows, cols = linear_sum_assignment(-cos[:, labels].cpu().numpy())
            y = labels[torch.as_tensor(cols, device=device)][torch.argsort(torch.as_tensor(rows, device=device))]
        else:
            y = cos.argmax(1)
        mixing = deltas[torch.arange(batch, device=device), y].T                   # [m, B]
        if ridge > 0:  # Tikhonov towards the current sources: argmin |D X / B - dW|^2 + lam |X - X_prev|^2
            gram = mixing.T @ mixing / batch ** 2
            lam = ridge * float(torch.diagonal(gram).mean())
            rhs = mixing.T @ dw / batch + lam * x
            x = torch.linalg.solve(gram + lam * torch.eye(batch, dtype=gram.dtype, device=device), rhs)
        else:
            x = batch * torch.linalg.lstsq(mixing, dw).solution
        x = torch.maximum(torch.minimum(x, hi), lo)
        residuals.append(float((mixing @ x / batch - dw).norm() / dw.norm()))
    return x.detach(), residuals
