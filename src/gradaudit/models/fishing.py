"""Class fishing: a malicious classifier that lets only one class's samples through the gradient, behind Robbing
the Fed's imprint block.

Wen, Geiping, Fowl, Goldblum, Goldstein, "Fishing for User Data in Large-Batch Federated Learning via Gradient
Magnification", ICML 2022 (arXiv:2202.00580). The server reshapes the final classifier (the last ``nn.Linear``
of the base network), logits f_c = W_c . h + b_c over the features h: every row except the target class t gets
weight 0 and bias beta = b_t + ``bias_gap``; row t keeps its weights. For every sample i the non-target logits
all equal beta, and f_it = W_t . h_i + b_t lies about ``bias_gap`` below them, so

    p_it = softmax(f_i)_t = exp(f_it - beta) / (exp(f_it - beta) + C - 1) = 0 exactly in float32

as soon as beta - f_it > ~104 (exp underflows; the default gap 1e3 leaves |W_t . h| up to ~900), while
p_ic = 1 / (C - 1) for every c != t. The cross-entropy gradient at the features is

    dL_i/dh_i = sum_c W_c (p_ic - 1[y_i = c]) = W_t (p_it - 1[y_i = t]) = -W_t 1[y_i = t]

(the other rows are zero), so every layer before the classifier -- the base network and the imprint block in
front of it -- receives gradient only from the samples of class t: the update of a batch of 128, or of a secure
aggregate of many clients, is the gradient of its class-t sub-batch (the "magnification": 1 / B of each
fished sample's gradient, but no other sample's). The bias gradients count the classes exactly:

    db_t = (1/B) sum_i (p_it - 1[y_i = t]) = -n_t / B,          db_c = 1 / (C - 1) - n_c / B   (c != t),

so n_t = round(-B db_t) (for an aggregate, B is the total number of samples) and every n_c likewise.

The readout. The fishing model is an :class:`~gradaudit.models.malicious.ImprintedModel` whose base is fished:
the imprint bins (K equal-mass bins of a measurement h(x) = w . x, see that module) now hold only the n_t fished
samples instead of all B, and Robbing the Fed's closed form reads every fished sample alone in its bin
exactly. A fished sample is alone with probability (1 - 1/K)^(n_t - 1) instead of (1 - 1/K)^(B - 1): 89% instead
of 37% for n_t = 16 of B = 128 samples and K = 128 bins, provided the bins are equal-mass for the *fished
class*. One class's images may be alike, and the whole data's prior for h then crowds them into a few bins; the
server knows which class it fishes, so it can measure the prior on public images of that class
(:func:`~gradaudit.models.malicious.measurement_prior`) and pass ``prior_mean`` / ``prior_std``. Measured on the
embedded photos (``benchmarks/beyond_malicious.py``, 100 random batches of 128, K = 128): 87% of the fished
samples recovered with either prior on average, but 9 against 14 of 16 on one class of very similar crops
(``tests/attacks/test_fishing.py``). The attack is :class:`gradaudit.attacks.analytic.Fishing`.

What is not the paper's. Wen et al. invert the magnified gradient by optimisation (gradient matching against
the class-t sub-batch) and, when one class is too common, add *feature fishing*: a binary search over several
rounds on a feature threshold until the bin holds a single sample. One observation here is one round, so
feature fishing is not implemented, and the imprint block's closed form replaces the optimisation.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .malicious import ImprintedModel
from .registry import MALICIOUS_MODELS, MODELS, register_model

#: the smallest bias gap accepted: exp(-gap) must underflow float32 (exp(x) == 0 for x < ~-103.97) with room
#: for the target logit W_t . h + b_t itself
MIN_BIAS_GAP = 120.0


def last_linear(module: nn.Module) -> tuple[str, nn.Linear]:
    """(name, layer) of the last ``nn.Linear`` in ``module``'s registration order: the classifier of every
    registry network."""
    found = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(f"{type(module).__name__} has no nn.Linear classifier to fish")
    return found[-1]


@torch.no_grad()
def fish(layer: nn.Linear, target_class: int, bias_gap: float) -> None:
    """Reshape a classifier in place: rows c != t get weight 0 and bias b_t + ``bias_gap`` (module docstring)."""
    if layer.bias is None:
        raise ConfigError("the fished classifier needs a bias")
    others = torch.ones(layer.out_features, dtype=torch.bool)
    others[target_class] = False
    layer.weight[others] = 0.0
    layer.bias[others] = layer.bias[target_class] + float(bias_gap)


@register_model("fishing", malicious=True)
class FishingModel(ImprintedModel):
    """An imprint block in front of a base network whose classifier fishes class ``target_class``.

    Args:
        num_classes, input_shape, base, bins, measurement, prior_mean, prior_std, gain, seed, base_kwargs: as for
            :class:`~gradaudit.models.malicious.ImprintedModel` (the measurement defaults to "random-linear":
            mean brightness cannot tell a sample from its mirror image, and one class's samples are alike).
        target_class: t, the class whose samples alone reach the gradient of the layers before the classifier.
        bias_gap: beta - b_t, how far the other classes' logits are lifted above the target's bias (>= 120 so that
            p_t underflows to 0 in float32; any finite value keeps the loss, ~bias_gap, finite).

    Parameters: as ImprintedModel's (``imprint.*``, ``imprint_out.*``, ``base.*``); ``classifier_name`` is the
    full name of the fished layer (e.g. ``base.fc``).
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 base: str = "lenet", bins: int = 128, measurement: str = "random-linear",
                 prior_mean: float = 0.0, prior_std: Optional[float] = None, gain: float = 1e-2, seed: int = 0,
                 base_kwargs: Optional[dict[str, Any]] = None, target_class: int = 0,
                 bias_gap: float = 1e3) -> None:
        if base in MALICIOUS_MODELS or base not in MODELS:
            choices = sorted(k for k in MODELS if k not in MALICIOUS_MODELS)
            raise ConfigError(f"fishing base must be one of {', '.join(choices)}, got '{base}'")
        if int(num_classes) < 2:
            raise ConfigError(f"fishing needs at least 2 classes, got {num_classes}")
        if not 0 <= int(target_class) < int(num_classes) or int(target_class) != target_class:
            raise ConfigError(f"fishing target_class must be a class in [0, {int(num_classes) - 1}], got "
                              f"{target_class}")
        if not (math.isfinite(float(bias_gap)) and float(bias_gap) >= MIN_BIAS_GAP):
            raise ConfigError(f"fishing bias_gap must be finite and >= {MIN_BIAS_GAP:g} (p_t must underflow to 0 "
                              f"in float32), got {bias_gap}")
        super().__init__(num_classes, input_shape, base=base, bins=bins, measurement=measurement,
                         prior_mean=prior_mean, prior_std=prior_std, gain=gain, seed=seed, base_kwargs=base_kwargs)
        name, layer = last_linear(self.base)
        if layer.out_features != int(num_classes):
            raise ConfigError(f"the last nn.Linear of base '{base}' ({name}) has {layer.out_features} outputs, "
                              f"not the {num_classes} classes: it is not the classifier")
        fish(layer, int(target_class), float(bias_gap))
        self.target_class, self.bias_gap = int(target_class), float(bias_gap)
        self.classifier_name = f"base.{name}"
