"""load_dataset / DATASETS and the offline lfw subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradaudit.data as data
from gradaudit.data import DATASETS, ImageDataset, load_dataset
from gradaudit.errors import ConfigError


def test_names():
    assert set(DATASETS) == {"embedded", "fashion-mnist", "cifar10", "cifar100", "image-folder", "lfw"}
    assert data.DEFAULT_DATASET == "embedded" and data.ImageDataset is ImageDataset


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(ConfigError) as err:
        load_dataset("embeded")
    msg = str(err.value)
    assert "did you mean 'embedded'" in msg
    assert all(name in msg for name in DATASETS)
    with pytest.raises(ConfigError, match="unknown dataset 'mnist-digits'; valid: cifar10, cifar100, embedded"):
        load_dataset("mnist-digits")


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "32"])
def test_bad_image_size(size):
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("embedded", image_size=size)


@pytest.mark.parametrize("name", ["embedded", "fashion-mnist", "cifar10", "cifar100", "lfw"])
def test_unknown_split(name):
    with pytest.raises(ConfigError, match="unknown split 'valid'.*test, train"):
        load_dataset(name, split="valid")


def test_lfw_subset():
    from skimage.data import lfw_subset

    ds = load_dataset("lfw")
    assert ds.images.shape == (200, 1, 25, 25) and ds.classes == ["face", "non-face"]
    assert ds.labels[:100].eq(0).all() and ds.labels[100:].eq(1).all()
    expected = np.rint(lfw_subset() * 255).astype(np.uint8)
    assert np.array_equal(ds.images[:, 0].numpy(), expected)
    z = ds.normalize(ds.batch(range(200))[0])
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std(correction=0)) - 1) < 1e-3
    assert load_dataset("lfw", image_size=32).images.shape == (200, 1, 32, 32)
    assert torch.equal(load_dataset("lfw", split="test").images, ds.images)
