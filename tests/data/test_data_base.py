"""ImageDataset: validation, batching, normalisation and subsetting."""

from __future__ import annotations

import pytest
import torch

from gradaudit.data import ImageDataset
from gradaudit.errors import ConfigError


def make(n=4, c=3, h=5, w=6, classes=("a", "b", "c"), **kw):
    g = torch.Generator().manual_seed(0)
    args = dict(name="toy", images=torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8),
                labels=torch.arange(n, dtype=torch.int64) % max(len(classes), 1), classes=list(classes),
                mean=(0.5,) * c, std=(0.25,) * c)
    args.update(kw)
    return ImageDataset(**args)


def test_properties():
    ds = make()
    assert len(ds) == 4 and ds.shape == (3, 5, 6) and ds.num_classes == 3
    assert "n=4" in repr(ds) and "toy" in repr(ds)


@pytest.mark.parametrize("change, message", [
    (dict(images=torch.zeros(2, 3, 4, 4)), "uint8"),
    (dict(images=torch.zeros(3, 4, 4, dtype=torch.uint8)), "[N, C, H, W]"),
    (dict(images=torch.zeros(2, 2, 4, 4, dtype=torch.uint8)), "C in (1, 3)"),
    (dict(labels=torch.zeros(4, dtype=torch.int32)), "int64"),
    (dict(labels=torch.zeros(3, dtype=torch.int64)), "[N] = [4]"),
    (dict(labels=torch.tensor([0, 1, 2, 3])), "[0, 2]"),
    (dict(labels=torch.tensor([0, -1, 2, 1])), "[0, 2]"),
    (dict(classes=[], labels=torch.zeros(4, dtype=torch.int64)), "classes"),
    (dict(mean=(0.5, 0.5)), "one value per channel (3)"),
    (dict(std=(0.2, 0.0, 0.2)), "std positive"),
])
def test_validation(change, message):
    with pytest.raises(ConfigError) as err:
        make(**change)
    assert message in str(err.value)


def test_batch_scales_to_unit_range():
    ds = make()
    x, y = ds.batch([2, 0])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (2, 3, 5, 6)
    assert torch.equal(x, ds.images[[2, 0]].float() / 255) and y.tolist() == [2, 0]
    x1, y1 = ds.batch(torch.tensor([3]))
    assert torch.equal(x1[0], ds.images[3].float() / 255) and y1.tolist() == [0]
    assert ds.batch(1)[0].shape == (1, 3, 5, 6)
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_normalize_known_values_and_round_trip():
    ds = make(mean=(0.1, 0.5, 0.9), std=(0.5, 0.25, 0.1))
    x = torch.full((2, 3, 5, 6), 0.6)
    z = ds.normalize(x)
    assert torch.allclose(z[:, 0], torch.tensor(1.0)) and torch.allclose(z[:, 1], torch.tensor(0.4))
    assert torch.allclose(z[:, 2], torch.tensor(-3.0))
    xb, _ = ds.batch(range(4))
    assert torch.allclose(ds.denormalize(ds.normalize(xb)), xb, atol=1e-6)
    assert ds.normalize(xb[0]).shape == (3, 5, 6)  # a single [C, H, W] image works too
    assert ds.normalize(xb.double()).dtype == torch.float64
    with pytest.raises(ConfigError):
        ds.normalize(torch.zeros(2, 1, 5, 6))


def test_subset_copies_and_keeps_metadata():
    ds = make(n=6)
    sub = ds.subset([5, 1])
    assert len(sub) == 2 and torch.equal(sub.images, ds.images[[5, 1]]) and sub.labels.tolist() == [2, 1]
    assert sub.classes == ds.classes and sub.mean == ds.mean and sub.std == ds.std
    before = ds.images[5].clone()
    sub.images[0] = 0
    assert torch.equal(ds.images[5], before)  # the subset owns its pixels
    empty = ds.subset([])
    assert len(empty) == 0 and empty.shape == ds.shape
