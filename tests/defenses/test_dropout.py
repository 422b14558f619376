"""Gradient dropout zeroes a binomial fraction p of the entries, reproducibly under a seeded generator."""

from __future__ import annotations

import math

import pytest
import torch

from gradaudit.defenses import GradientDropout
from gradaudit.errors import ConfigError


def _update(n=100_000):
    g = torch.Generator().manual_seed(0)
    return {"a": torch.rand(n // 2, generator=g) + 0.1, "b": torch.rand(n // 4, 2, generator=g) + 0.1}


@pytest.mark.parametrize("p", [0.3, 0.5, 0.7, 0.9])
def test_zero_fraction_is_binomial_p_and_kept_entries_unchanged(p):
    update = _update()
    out = GradientDropout(p)(update, generator=torch.Generator().manual_seed(1))
    n = sum(v.numel() for v in update.values())
    zeros = sum(int((v == 0).sum()) for v in out.values())
    assert abs(zeros / n - p) < 5 * math.sqrt(p * (1 - p) / n)
    for k in update:
        kept = out[k] != 0
        assert torch.equal(out[k][kept], update[k][kept])


def test_rescale_divides_kept_entries_by_keep_probability():
    update = _update(1000)
    out = GradientDropout(0.5, rescale=True)(update, generator=torch.Generator().manual_seed(2))
    for k in update:
        kept = out[k] != 0
        torch.testing.assert_close(out[k][kept], update[k][kept] / 0.5)
    assert GradientDropout(0.5, rescale=True).describe() == "dropout-rescaled:0.5"


def test_reproducible_with_seeded_generator():
    update = _update(10_000)
    d = GradientDropout(0.5)
    a = d(update, generator=torch.Generator().manual_seed(7))
    b = d(update, generator=torch.Generator().manual_seed(7))
    c = d(update, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in update)
    assert not all(torch.equal(a[k], c[k]) for k in update)


def test_p0_identity_describe_and_validation():
    update = _update(1000)
    out = GradientDropout(0.0)(update)
    assert all(torch.equal(out[k], update[k]) for k in update)
    assert GradientDropout(0.5).describe() == "dropout:0.5"
    for bad in (1.0, -0.2, 2.0, float("nan")):
        with pytest.raises(ConfigError):
            GradientDropout(bad)
