"""Models a malicious server sends: the imprint module of Robbing the Fed (Fowl et al., ICLR 2022), and the
wide head of the tensor method (:class:`WideFeatureModel`, registry name ``wide-head``; see its docstring).

Fowl, Geiping, Czaja, Goldblum, Goldstein, "Robbing the Fed: Directly Obtaining Private Data in Federated
Learning with Modified Models", arXiv:2110.13057. The server prepends a small block to an ordinary network:

    x  (the normalised input, N = C*H*W values)
    z_k = relu(w . x - q_k),                k = 0 .. K-1            (imprint: Linear(N -> K) + ReLU)
    x' = x + v * sum_k z_k                                           (back to the input: Linear(K -> N))
    f(x) = base(x')

Every row of the imprint weight is the *same* measurement vector w, so z_k is "how far the measurement
h(x) = w . x lies above the threshold q_k"; the biases are -q_k. The thresholds q_0 < q_1 < ... < q_{K-1}
are equal-mass quantiles of the server's prior for h, q_k = mu + sigma * Phi^-1(k / K) (q_0 = mu - 10 sigma
stands for -infinity), so that a sample of the client's batch falls into each of the K bins
[q_k, q_{k+1}) with probability 1/K.

All K columns of the back projection equal the same vector v (bias 0). Hence for sample i the derivative of
the loss with respect to z_ik, c_i = v . dL/dx'_i, does not depend on k, and the mean gradient of row k is

    dL/dW_k = (1/B) sum_{i: h_i > q_k} c_i x_i,      dL/db_k = (1/B) sum_{i: h_i > q_k} c_i.

Consecutive rows differ by the samples of one bin, so when a single sample i falls into bin k,
(dW_k - dW_{k+1}) / (db_k - db_{k+1}) = x_i exactly: see
:class:`gradaudit.attacks.analytic.RobbingTheFed`. With B samples uniform over K bins, a given sample is
alone in its bin with probability (1 - 1/K)^(B-1): 61% for B=64, K=128.

``v`` is a small random vector (norm ``gain``), so the block only slightly perturbs the input of the base
network: the model still trains and predicts like the base network (the "benign-looking" part of the attack).

The prior of h. The inputs are normalised per channel (mean 0, std 1 over the data set), so

* ``measurement="random-linear"``: w is a fixed random Gaussian direction of unit norm (seeded by
  ``seed``). For any data whose pixels have unit variance, E_w[Var h] = trace(Sigma) / N = 1, so h ~ N(0, 1)
  is the prior (measured on the embedded photos: std 0.8-1.4 over 5 directions);
* ``measurement="mean-brightness"``: w = (1/N, ..., 1/N), h is the image's mean normalised brightness. Its
  spread depends on how correlated the pixels are: between 1/sqrt(N) (independent pixels) and 1 (fully
  correlated). The default prior is N(0, 0.5^2), a public statistic of natural photos (0.46 on the embedded
  set); pass ``prior_std`` (and ``prior_mean``) estimated from public data of the client's kind, e.g. with
  :func:`measurement_prior`.

A prior that is too narrow or too wide crowds the samples into fewer bins and fewer are recovered.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .registry import MODELS, ModelSpec, build_model, register_model

MEASUREMENTS = ("mean-brightness", "random-linear")
#: default std of the measurement's prior (normalised inputs), per measurement; see the module docstring
DEFAULT_PRIOR_STD = {"mean-brightness": 0.5, "random-linear": 1.0}


def measurement_vector(measurement: str, n: int, seed: int = 0) -> torch.Tensor:
    """The measurement w (length ``n``): constant 1/n (mean brightness) or a seeded unit Gaussian direction."""
    if measurement == "mean-brightness":
        return torch.full((n,), 1.0 / n)
    if measurement == "random-linear":
        w = torch.randn(n, generator=torch.Generator().manual_seed(seed))
        return w / w.norm()
    raise ConfigError(f"unknown imprint measurement '{measurement}'; valid: {', '.join(MEASUREMENTS)}")


def quantile_thresholds(bins: int, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """q_k = mean + std * Phi^-1(k / K), k = 0..K-1, with q_0 = mean - 10 std (all K bins equal mass)."""
    normal = NormalDist()
    z = [-10.0] + [normal.inv_cdf(k / bins) for k in range(1, bins)]
    return mean + std * torch.tensor(z, dtype=torch.float64).to(torch.float32)


def measurement_prior(public_images: torch.Tensor, measurement: str = "mean-brightness",
                      seed: int = 0) -> tuple[float, float]:
    """(mean, std) of h = w . x over a public batch of *normalised* images ``[n, C, H, W]``: the server's prior."""
    x = public_images.flatten(1).to(torch.float32)
    h = x @ measurement_vector(measurement, x.shape[1], seed)
    return float(h.mean()), float(h.std()) if h.numel() > 1 else 1.0


@register_model("imprint", malicious=True)
class ImprintedModel(nn.Module):
    """A base network behind Robbing the Fed's imprint block (see the module docstring).

    Args:
        num_classes, input_shape: as for every registry model.
        base: registry name of the network behind the block ("lenet", "mlp", "convnet", "resnet18").
        bins: K, the number of imprint rows (bins).
        measurement: "mean-brightness" or "random-linear".
        prior_mean, prior_std: the server's Gaussian prior for h (std None: the measurement's default).
        gain: norm of the back-projection vector v (how much the block perturbs the base network's input).
        seed: seeds the random measurement and v, so the block is the same whatever the global RNG state.
        base_kwargs: keyword arguments of the base network.

    Parameters are named ``imprint.weight`` [K, N], ``imprint.bias`` [K], ``imprint_out.weight`` [N, K],
    ``imprint_out.bias`` [N], then ``base.*``.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 base: str = "lenet", bins: int = 128, measurement: str = "mean-brightness",
                 prior_mean: float = 0.0, prior_std: float | None = None, gain: float = 1e-2, seed: int = 0,
                 base_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()

        if base == "imprint" or base not in MODELS:
            choices = sorted(k for k in MODELS if k != "imprint")
            raise ConfigError(f"imprint base must be one of {', '.join(choices)}, got '{base}'")
        if int(bins) < 2:
            raise ConfigError(f"imprint bins must be >= 2, got {bins}")
        if measurement not in MEASUREMENTS:
            raise ConfigError(f"unknown imprint measurement '{measurement}'; valid: {', '.join(MEASUREMENTS)}")
        std = DEFAULT_PRIOR_STD[measurement] if prior_std is None else float(prior_std)
        if not (math.isfinite(std) and std > 0):
            raise ConfigError(f"imprint prior_std must be > 0, got {prior_std}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.bins, self.measurement = int(bins), measurement
        n = math.prod(self.input_shape)
        self.imprint = nn.Linear(n, self.bins)
        self.imprint_out = nn.Linear(self.bins, n)
        with torch.no_grad():
            w = measurement_vector(measurement, n, seed)
            self.imprint.weight.copy_(w.expand(self.bins, n))
            self.imprint.bias.copy_(-quantile_thresholds(self.bins, float(prior_mean), std))
            v = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1))
            self.imprint_out.weight.copy_((gain * v / v.norm() / self.bins).unsqueeze(1).expand(n, self.bins))
            self.imprint_out.bias.zero_()
        self.base = build_model(ModelSpec(base, num_classes, self.input_shape, dict(base_kwargs or {})))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.imprint(x.flatten(1)))
        return self.base(x + self.imprint_out(z).view_as(x))


# --------------------------------------------------------------------------------------------------------------
# The wide head of the tensor method (seed 002 section 4.2; Wang, Lee, Lei 2023)

#: backbones whose last module is the linear classifier ``fc`` on the flattened features
WIDE_BACKBONES = ("convnet", "lenet", "resnet18")


def wide_layout(width: int, trained_fraction: float) -> tuple[int, int]:
    """(first, stop): the rows ``first:stop`` of the wide layer are the random Gaussian neurons; rows ``0:first``
    are the ordinary ("trained") ones. first = round(trained_fraction * width)."""
    return int(round(float(trained_fraction) * int(width))), int(width)


@register_model("wide-head", malicious=True)
class WideFeatureModel(nn.Module):
    """A backbone whose classifier is preceded by a wide linear layer of partly random Gaussian neurons.

    The change a server makes for the tensor-based feature reconstruction of seed 002 (section 4.2, after
    Wang, Lee, Lei, AISTATS 2023). With h = backbone(x) in R^d (the flattened input of the backbone's
    classifier), the model computes

        z = relu(V h + b)    (``wide``: Linear(d -> width)),        f(x) = A z + c    (``classifier``).

    The rows ``0:k`` of V (k = round(trained_fraction * width)) are ordinary neurons with the usual
    initialisation, the ones the server trains for the task (or copies from a trained model), so the model
    stays useful; the rows ``k:width`` are the tensor method's neurons:

    * w_j ~ N(0, I_d) i.i.d. (``random_std`` times), bias 0: Stein's lemma needs Gaussian w_j and
      sigma(w_j . h) with no offset;
    * their classifier columns are rank one, A[:, j] = a_j v, with a_j = +-``head_scale`` / (width - k)
      (random signs) and v a fixed centred unit vector over the classes, +-1 on a random half of them
      (before centring), so that every class gets a residual of about the same size. Then, for cross-entropy, the mean
      gradient of w_j is

          g_j = (1/B) sum_i (sum_c dl/df_ic A_cj) relu'(w_j . h_i) h_i = a_j (1/B) sum_i r_i relu'(w_j . h_i) h_i,

      with r_i = v . (softmax(f(x_i)) - onehot(y_i)) the same for every j: exactly the two-layer form the
      tensor method inverts (:func:`gradaudit.attacks.features.tensor.reconstruct_features`). Because v is
      centred, r_i ~ -v_{y_i} != 0, with both signs across classes. (A Gaussian v gave some classes
      v_y ~ 0: their samples left almost no trace, and per-feature errors were worse.)

    Centring (recommended; :meth:`centre_features`). Features after a ReLU backbone are strongly correlated
    (mean |cos| 0.89 between the embedded photos' ConvNet features), which makes the whitening of the tensor
    method ill-conditioned: on such features the per-feature error was no better than a random rotation inside
    the true span. A server holding public data of the client's kind estimates the mean feature mu and sets
    the random rows' biases to b_j = -w_j . mu, so they compute relu(w_j . (h - mu)); it stores mu in the buffer
    ``feature_centre`` (sent with the model). Since db_j = a_j (1/B) sum_i r_i relu'(.), the attacker forms
    g_j - db_j mu, the same two-layer gradient for the centred features h - mu (cos 0.25 on the same photos).

    Everything is seeded by ``seed``, so the server (and the attack, from the Observation's ModelSpec) rebuilds
    the same layout. Parameters: ``backbone.*`` (its ``fc`` is removed), ``wide.weight`` [width, d],
    ``wide.bias`` [width], ``classifier.weight`` [C, width], ``classifier.bias`` [C].

    Args:
        num_classes, input_shape: as for every registry model.
        backbone: "convnet", "lenet" or "resnet18" (any registry model whose classifier is ``fc``).
        width: neurons of the wide layer (trained plus random).
        trained_fraction: share of ordinary neurons, in [0, 1).
        random_std: std of the random rows' entries (1: N(0, I) as the tensor method states).
        head_scale: |a_j| * (width - k); small, so the random neurons barely move the logits.
        seed: seeds the random rows, their head and v.
        backbone_kwargs: keyword arguments of the backbone.
        centre_on_public: ask the server that sends this model to centre it on public data first
            (:meth:`centre_features`; the evaluation cell does so with the dataset's images outside the private
            batch). It changes no shape, only where the server starts from.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 backbone: str = "convnet", width: int = 4096, trained_fraction: float = 0.25,
                 random_std: float = 1.0, head_scale: float = 1.0, seed: int = 0,
                 backbone_kwargs: dict[str, Any] | None = None, centre_on_public: bool = False) -> None:
        super().__init__()

        if backbone not in WIDE_BACKBONES:
            raise ConfigError(f"wide-head backbone must be one of {', '.join(WIDE_BACKBONES)}, got '{backbone}'")
        if not 0 <= float(trained_fraction) < 1:
            raise ConfigError(f"wide-head trained_fraction must be in [0, 1), got {trained_fraction}")
        first, stop = wide_layout(width, trained_fraction)
        if int(width) < 2 or stop - first < 2:
            raise ConfigError(f"wide-head needs at least 2 random neurons, got width={width}, "
                              f"trained_fraction={trained_fraction}")
        if not (random_std > 0 and head_scale > 0 and num_classes >= 2):
            raise ConfigError("wide-head needs random_std > 0, head_scale > 0 and at least 2 classes")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.width, self.first = int(width), first
        self.backbone = build_model(ModelSpec(backbone, num_classes, self.input_shape, dict(backbone_kwargs or {})))
        d = self.backbone.fc.in_features
        self.feature_dim = d
        self.backbone.fc = nn.Identity()
        self.wide = nn.Linear(d, self.width)
        self.classifier = nn.Linear(self.width, num_classes)
        gen = torch.Generator().manual_seed(seed)
        m = stop - first
        with torch.no_grad():
            self.wide.weight[first:] = random_std * torch.randn(m, d, generator=gen)
            self.wide.bias[first:] = 0.0
            signs = torch.randint(0, 2, (m,), generator=gen).float() * 2 - 1
            v = (torch.randperm(num_classes, generator=gen) < num_classes // 2).float() * 2 - 1
            v = v - v.mean()
            v = v / v.norm()
            self.classifier.weight[:, first:] = v[:, None] * (head_scale / m * signs)[None, :]
        self.register_buffer("feature_centre", torch.zeros(d))
        self.centre_on_public = bool(centre_on_public)

    @torch.no_grad()
    def centre_features(self, public_inputs: torch.Tensor) -> torch.Tensor:
        """Centre the random neurons on the mean feature of ``public_inputs`` (normalised, [n, C, H, W]).

        Sets ``feature_centre`` = mu and the random rows' biases to -w_j . mu (see the class docstring);
        returns mu. Backbones with batch norm are evaluated with their running statistics."""
        was_training = self.training
        self.eval()
        try:
            mu = self.features(public_inputs).mean(0)
        finally:
            self.train(was_training)
        rows = self.random_rows
        self.feature_centre.copy_(mu)
        self.wide.bias[rows] = -(self.wide.weight[rows] @ mu)
        return mu

    @property
    def random_rows(self) -> slice:
        """The rows of ``wide.weight`` holding the random Gaussian neurons."""
        return slice(self.first, self.width)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """h(x): the input of the wide layer, [B, d]."""
        return self.backbone(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.wide(self.features(x))))
