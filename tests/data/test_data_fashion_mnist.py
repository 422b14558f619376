"""The IDX reader and the Fashion-MNIST loader, on small IDX files written by the tests."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradaudit.data import CorruptDataError, fashion_mnist, load_dataset
from gradaudit.data.idx import parse_idx, read_idx
from gradaudit.errors import DataNotFoundError, GradauditError


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float32", "float64"])
def test_read_idx_round_trip(tmp_path, formats, gz, dtype):
    rng = np.random.default_rng(1)
    array = (rng.normal(size=(3, 4, 5)) * 1000).astype(dtype)
    got = read_idx(formats.write_idx(tmp_path / "a.idx", array, gz=gz))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative and np.array_equal(got, array)


def test_read_idx_is_big_endian(tmp_path):
    raw = bytes([0, 0, 0x0B, 1]) + (2).to_bytes(4, "big") + (258).to_bytes(2, "big") + (1).to_bytes(2, "big")
    (tmp_path / "x").write_bytes(raw)
    assert read_idx(tmp_path / "x").tolist() == [258, 1]


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b + b"\0", "trailing bytes"),
    (lambda b: b"\x01" + b[1:], "bad IDX magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "bad IDX magic"),
    (lambda b: b[:3], "too short"),
    (lambda b: b[:6], "truncated IDX header"),
])
def test_corrupt_idx_is_reported(tmp_path, formats, mangle, message):
    raw = formats.idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mangle(raw))
    with pytest.raises(CorruptDataError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value) and isinstance(err.value, GradauditError)


def test_truncated_gzip_is_reported(tmp_path, formats):
    blob = gzip.compress(formats.idx_bytes(np.arange(600, dtype=np.uint8).reshape(6, 10, 10)))
    path = tmp_path / "x.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptDataError, match="gzip"):
        read_idx(path)
    with pytest.raises(CorruptDataError):
        parse_idx(b"")


def test_loads_known_pixels_from_root(fmnist_dir, fmnist_arrays):
    xtr, ytr, xte, yte = fmnist_arrays
    train = load_dataset("fashion-mnist", root=fmnist_dir)
    assert train.images.shape == (6, 1, 28, 28) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images[:, 0].numpy(), xtr) and train.labels.tolist() == ytr.tolist()
    assert train.classes == fashion_mnist.CLASSES and len(train.classes) == 10 and train.classes[9] == "Ankle boot"
    assert train.mean == (0.2860,) and train.std == (0.3530,)
    test = load_dataset("fashion-mnist", root=fmnist_dir, split="test")
    assert np.array_equal(test.images[:, 0].numpy(), xte) and test.labels.tolist() == yte.tolist()


def test_every_search_location_is_used(tmp_path, fmnist_dir, monkeypatch):
    def only_in(folder: Path) -> Path:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(fmnist_dir, folder)
        return folder

    fmnist_dir = fmnist_dir.rename(tmp_path / "source")
    root = only_in(tmp_path / "parent" / "fashion-mnist").parent
    assert len(load_dataset("fashion-mnist", root=root)) == 6  # root/fashion-mnist
    shutil.rmtree(root)
    env = only_in(tmp_path / "env" / "fashion-mnist").parent
    monkeypatch.setenv("GRADAUDIT_DATA", str(env))
    assert len(load_dataset("fashion-mnist")) == 6  # $GRADAUDIT_DATA/fashion-mnist
    shutil.rmtree(env)
    only_in(tmp_path / "xdg" / "gradaudit" / "fashion-mnist")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert len(load_dataset("fashion-mnist")) == 6  # user cache
    shutil.rmtree(tmp_path / "xdg")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", only_in(tmp_path / "usr-share" / "fashion-mnist"))
    assert len(load_dataset("fashion-mnist")) == 6  # the Debian package folder
    for off in ("off", "0", "false", "NO"):  # what CI sets: the system folders are not searched
        monkeypatch.setenv("GRADAUDIT_SYSTEM_DATA", off)
        with pytest.raises(DataNotFoundError) as err:
            load_dataset("fashion-mnist")
        assert "usr-share" not in str(err.value)
    monkeypatch.setenv("GRADAUDIT_SYSTEM_DATA", "on")
    shutil.rmtree(tmp_path / "usr-share")
    with pytest.raises(DataNotFoundError):
        load_dataset("fashion-mnist")


def test_dotted_file_names_are_accepted(tmp_path, formats, fmnist_arrays):
    xtr, ytr, _, _ = fmnist_arrays
    formats.write_idx(tmp_path / "train-images.idx3-ubyte", xtr)
    formats.write_idx(tmp_path / "train-labels.idx1-ubyte.gz", ytr, gz=True)
    assert np.array_equal(load_dataset("fashion-mnist", root=tmp_path).images[:, 0].numpy(), xtr)


def test_missing_data_lists_every_place_and_how_to_get_it(tmp_path, isolated_data_env, monkeypatch):
    monkeypatch.setenv("GRADAUDIT_DATA", str(tmp_path / "env"))
    root = tmp_path / "nothing-here"
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion-mnist", root=root)
    msg = str(err.value)
    for place in (root, root / "fashion-mnist", tmp_path / "env" / "fashion-mnist",
                  isolated_data_env / "cache" / "gradaudit" / "fashion-mnist", fashion_mnist.DEBIAN_DIR):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg and "--download" in msg


def test_inconsistent_files_are_reported(tmp_path, formats, fmnist_arrays):
    xtr, ytr, _, _ = fmnist_arrays
    formats.write_idx(tmp_path / "train-images-idx3-ubyte", xtr)
    formats.write_idx(tmp_path / "train-labels-idx1-ubyte", ytr[:-1])
    with pytest.raises(CorruptDataError, match="labels"):
        load_dataset("fashion-mnist", root=tmp_path)
    formats.write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(6, 10, dtype=np.uint8))
    with pytest.raises(CorruptDataError, match="out of range"):
        load_dataset("fashion-mnist", root=tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(formats.idx_bytes(xtr)[:-5])
    with pytest.raises(CorruptDataError, match="truncated"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_image_size_resizes_with_pillow(fmnist_dir, fmnist_arrays):
    ds = load_dataset("fashion-mnist", root=fmnist_dir, image_size=14)
    assert ds.images.shape == (6, 1, 14, 14) and ds.mean == (0.2860,)
    expected = np.asarray(Image.fromarray(fmnist_arrays[0][2]).resize((14, 14), Image.Resampling.BICUBIC))
    assert np.array_equal(ds.images[2, 0].numpy(), expected)


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="optional real-data check: Debian's dataset-fashion-mnist is not installed")
def test_real_debian_files(monkeypatch):
    """Only where the real files are installed (never in CI): the reader on the real test split."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", DEBIAN)
    ds = load_dataset("fashion-mnist", split="test")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert abs(float(ds.images.float().mean()) / 255 - 0.286) < 0.01
