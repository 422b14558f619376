"""Gradient pruning keeps exactly the top (1 - p) fraction by magnitude, per tensor or over all tensors."""

from __future__ import annotations

import math

import pytest
import torch

from gradaudit.defenses import GradientPruning
from gradaudit.errors import ConfigError

from _defense_helpers import random_update


def _check_top_fraction(original: torch.Tensor, pruned: torch.Tensor, p: float) -> None:
    """Exactly n - floor(p n) entries kept, unchanged, and every kept |g| >= every pruned |g|."""
    o, q = original.reshape(-1), pruned.reshape(-1)
    kept = q != 0
    n = o.numel()
    assert int(kept.sum()) == n - math.floor(p * n + 1e-9)
    assert torch.equal(q[kept], o[kept])
    if kept.any() and (~kept).any():
        assert o[kept].abs().min() >= o[~kept].abs().max()


@pytest.mark.parametrize("p", [0.3, 0.5, 0.7, 0.9, 0.99])
def test_layer_pruning_keeps_top_fraction_of_each_tensor(p):
    update = random_update(0, scales=(1.0, 50.0, 0.01))
    out = GradientPruning(p)(update)
    assert list(out) == list(update)
    for k in update:
        _check_top_fraction(update[k], out[k], p)


@pytest.mark.parametrize("p", [0.3, 0.9, 0.99])
def test_global_pruning_keeps_top_fraction_over_all_tensors(p):
    update = random_update(1, scales=(1.0, 50.0, 0.01))
    out = GradientPruning(p, scope="global")(update)
    flat_in = torch.cat([v.reshape(-1) for v in update.values()])
    flat_out = torch.cat([out[k].reshape(-1) for k in update])
    _check_top_fraction(flat_in, flat_out, p)
    for k in update:
        assert out[k].shape == update[k].shape


def test_global_differs_from_layer_when_scales_differ():
    update = random_update(2, scales=(1.0, 1.0, 0.01))
    glob = GradientPruning(0.5, scope="global")(update)
    layer = GradientPruning(0.5)(update)
    assert int((glob["t2"] != 0).sum()) == 0           # the tiny tensor loses everything globally
    assert int((layer["t2"] != 0).sum()) == 160        # but keeps half of its 320 entries per layer


def test_ties_still_keep_exact_count_and_p0_is_identity():
    update = {"w": torch.ones(10, 10)}
    assert int((GradientPruning(0.37)(update)["w"] != 0).sum()) == 100 - 37
    u = random_update(3)
    out = GradientPruning(0.0)(u)
    assert all(torch.equal(out[k], u[k]) for k in u)


def test_describe_and_validation():
    assert GradientPruning(0.9).describe() == "prune:0.9"
    assert GradientPruning(0.9, "global").describe() == "prune-global:0.9"
    for bad in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError):
            GradientPruning(bad)
    with pytest.raises(ConfigError):
        GradientPruning(0.5, scope="row")
