"""Gradient clipping scales the whole update to norm C when it is longer, and leaves it alone otherwise."""

from __future__ import annotations

import pytest
import torch

from gradaudit.defenses import GradientClipping, global_norm
from gradaudit.errors import ConfigError

from _defense_helpers import random_update


def _norm(u):
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in u.values())))


@pytest.mark.parametrize("C", [2.0, 4.0, 8.0])
def test_clipping_above_gives_norm_c_and_keeps_direction(C):
    update = random_update(0)                   # norm ~ sqrt(1528) ~ 39 > C
    assert _norm(update) > C
    out = GradientClipping(C)(update)
    assert _norm(out) == pytest.approx(C, rel=1e-6)
    scale = C / _norm(update)
    for k in update:
        torch.testing.assert_close(out[k], update[k] * scale, rtol=1e-6, atol=0)


def test_clipping_below_leaves_update_unchanged():
    update = random_update(1, scales=(0.01, 0.01, 0.01))
    assert _norm(update) < 4
    out = GradientClipping(4)(update)
    assert all(torch.equal(out[k], update[k]) for k in update)


def test_norm_is_global_over_all_tensors():
    update = {"a": torch.full((4,), 1.5), "b": torch.full((4,), 1.5)}  # each 3.0 < 4, together sqrt(18) > 4
    out = GradientClipping(4)(update)
    assert float(global_norm(out)) == pytest.approx(4.0, rel=1e-6)
    assert float(out["a"][0]) == pytest.approx(1.5 * 4 / 18 ** 0.5, rel=1e-6)


def test_zero_update_and_validation():
    z = {"w": torch.zeros(3)}
    assert torch.equal(GradientClipping(1)(z)["w"], z["w"])
    assert GradientClipping(4).describe() == "clip:4"
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError):
            GradientClipping(bad)
