"""Which samples to audit: indices spread over the classes, so a handful of images is not one class."""

from __future__ import annotations

from typing import Sequence

import torch


def class_spread(labels: Sequence[int] | torch.Tensor, n: int, seed: int = 0) -> list[int]:
    """``n`` indices, round-robin over the classes (one of every class, then a second of every class, ...).

    Within a class the order is a seeded permutation of the dataset, so ``seed`` fixes the pick. Raises
    ``ValueError`` when the dataset has fewer than ``n`` samples.
    """
    labels = torch.as_tensor(labels).flatten()
    if not 0 <= n <= len(labels):
        raise ValueError(f"cannot pick {n} samples from a dataset of {len(labels)}")
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i in torch.randperm(len(labels), generator=g).tolist():
        by_class.setdefault(int(labels[i]), []).append(i)
    out, k = [], 0
    while len(out) < n:
        for c in sorted(by_class):
            if k < len(by_class[c]) and len(out) < n:
                out.append(by_class[c][k])
        k += 1
    return out
