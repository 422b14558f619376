"""Accuracy of recovered labels.

Label-recovery attacks (e.g. iDLG, or counting negative entries of the last layer's bias gradient) return
the *multiset* of labels in the batch, in no particular order. So accuracy is order-free:

    label_accuracy = |P ∩ T| / B

where ``P`` and ``T`` are the predicted and true label multisets (intersection takes, for each class, the
minimum of its two counts) and ``B = |T|`` is the batch size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from gradaudit.errors import ConfigError


def _as_label_list(labels: Tensor | Sequence[int], name: str) -> list[int]:
    if isinstance(labels, Tensor):
        if labels.dim() != 1:
            raise ConfigError(
                f"label_accuracy: {name} must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}"
            )
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ConfigError(f"label_accuracy: {name} must hold integer class indices")
        return [int(v) for v in labels.tolist()]
    try:
        return [int(v) for v in labels]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"label_accuracy: {name} must be a sequence of class indices ({exc})") from None


def label_accuracy(predicted: Tensor | Sequence[int], true: Tensor | Sequence[int]) -> float:
    """Order-free (multiset) label accuracy ``|predicted ∩ true| / B``, in ``[0, 1]``.

    Both arguments are 1-D tensors or sequences of class indices of the same length ``B > 0``. Example:
    predicted ``[3, 3, 1]`` against true ``[1, 3, 2]`` shares ``{1, 3}``, so the accuracy is 2/3.
    """
    pred = _as_label_list(predicted, "predicted")
    truth = _as_label_list(true, "true")
    if not truth:
        raise ConfigError("label_accuracy: empty label batch")
    if len(pred) != len(truth):
        raise ConfigError(f"label_accuracy: {len(pred)} predicted labels for a batch of {len(truth)}")
    common = Counter(pred) & Counter(truth)
    return sum(common.values()) / len(truth)
