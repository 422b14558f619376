"""The class-per-folder loader on PNG files written by the tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gradaudit.data import CorruptDataError, load_dataset
from gradaudit.errors import ConfigError, DataNotFoundError


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


@pytest.fixture
def folder(tmp_path):
    """root/{dog,cat}/*.png with known 8x8 RGB pixels (written out of order to check sorting)."""
    rng = np.random.default_rng(3)
    pix = {}
    for cls, names in (("dog", ["b.png", "a.PNG"]), ("cat", ["z.png", "c.png", "m.png"])):
        for name in names:
            pix[(cls, name)] = write_png(tmp_path / "root" / cls / name,
                                         rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "root" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "root" / ".hidden").mkdir()
    return tmp_path / "root", pix


def test_pixels_labels_and_order(folder):
    root, pix = folder
    ds = load_dataset("image-folder", root=root, image_size=8)
    assert ds.classes == ["cat", "dog"] and ds.images.shape == (5, 3, 8, 8)
    order = [("cat", "c.png"), ("cat", "m.png"), ("cat", "z.png"), ("dog", "a.PNG"), ("dog", "b.png")]
    for i, key in enumerate(order):
        assert np.array_equal(ds.images[i].permute(1, 2, 0).numpy(), pix[key]), key
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]


def test_stats_are_computed_from_the_images(folder):
    ds = load_dataset("image-folder", root=folder[0], image_size=8)
    x = ds.images.numpy().astype(np.float64) / 255
    assert np.allclose(ds.mean, x.mean(axis=(0, 2, 3)), atol=1e-5)
    assert np.allclose(ds.std, x.std(axis=(0, 2, 3)), atol=1e-5)


def test_default_size_is_32(folder):
    assert load_dataset("image-folder", root=folder[0]).images.shape == (5, 3, 32, 32)


def test_grayscale_folder_gives_one_channel_and_mixed_gives_rgb(tmp_path):
    gray = write_png(tmp_path / "g" / "only" / "a.png", np.arange(64, dtype=np.uint8).reshape(8, 8))
    ds = load_dataset("image-folder", root=tmp_path / "g", image_size=8)
    assert ds.images.shape == (1, 1, 8, 8) and np.array_equal(ds.images[0, 0].numpy(), gray)
    write_png(tmp_path / "g" / "other" / "b.png", np.zeros((8, 8, 3), dtype=np.uint8))
    mixed = load_dataset("image-folder", root=tmp_path / "g", image_size=8)
    assert mixed.images.shape == (2, 3, 8, 8)
    assert all(np.array_equal(mixed.images[0, c].numpy(), gray) for c in range(3))


def test_non_square_is_centre_cropped(tmp_path):
    wide = write_png(tmp_path / "r" / "k" / "w.png", np.random.default_rng(0).integers(0, 256, (6, 10, 3),
                                                                                       dtype=np.uint8))
    ds = load_dataset("image-folder", root=tmp_path / "r", image_size=6)
    assert np.array_equal(ds.images[0].permute(1, 2, 0).numpy(), wide[:, 2:8])


def test_split_subfolder_is_used(tmp_path):
    write_png(tmp_path / "r" / "train" / "a" / "1.png", np.zeros((4, 4, 3), dtype=np.uint8))
    write_png(tmp_path / "r" / "test" / "a" / "1.png", np.full((4, 4, 3), 200, dtype=np.uint8))
    write_png(tmp_path / "r" / "test" / "b" / "1.png", np.full((4, 4, 3), 100, dtype=np.uint8))
    test = load_dataset("image-folder", root=tmp_path / "r", split="test", image_size=4)
    assert test.classes == ["a", "b"] and test.images[:, 0, 0, 0].tolist() == [200, 100]
    assert load_dataset("image-folder", root=tmp_path / "r", image_size=4).images.max() == 0


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs a root"):
        load_dataset("image-folder")
    with pytest.raises(DataNotFoundError, match="missing"):
        load_dataset("image-folder", root=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no class sub-folders"):
        load_dataset("image-folder", root=tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(DataNotFoundError, match="no images"):
        load_dataset("image-folder", root=tmp_path / "empty")
    (tmp_path / "empty" / "cls" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(CorruptDataError, match="broken.png"):
        load_dataset("image-folder", root=tmp_path / "empty")


def test_sixteen_bit_grayscale_is_scaled(tmp_path):
    path = tmp_path / "r" / "k" / "deep.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(path)
    ds = load_dataset("image-folder", root=tmp_path / "r", image_size=4)
    assert ds.images.shape == (1, 1, 4, 4) and int(ds.images.min()) == 255
    assert ds.labels.dtype == torch.int64
