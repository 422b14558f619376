"""CIFAR-10 / CIFAR-100 loaders on small pickle batches in the real layout, and the restricted unpickler."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from gradaudit.data import CorruptDataError, load_dataset, safe_pickle
from gradaudit.data.cifar import CIFAR10, CIFAR100
from gradaudit.errors import DataNotFoundError


def expected(batches, names, key="labels"):
    data = np.concatenate([batches[n][key_of(batches[n], "data")] for n in names])
    labels = sum((list(batches[n][key_of(batches[n], key)]) for n in names), [])
    return data.reshape(-1, 3, 32, 32), labels


def key_of(batch, key):
    return key.encode() if key.encode() in batch else key


def test_cifar10_real_layout_bytes_keys(cifar10_root, formats):
    root, batches = cifar10_root
    train = load_dataset("cifar10", root=root)
    images, labels = expected(batches, [f"data_batch_{k}" for k in range(1, 6)])
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images.numpy(), images) and train.labels.tolist() == labels
    assert train.classes == formats.CIFAR10_NAMES
    assert train.mean == CIFAR10.mean and train.std == CIFAR10.std and train.name == "cifar10"
    test = load_dataset("cifar10", root=root, split="test")
    images, labels = expected(batches, ["test_batch"])
    assert np.array_equal(test.images.numpy(), images) and test.labels.tolist() == labels


def test_pixel_layout_is_rgb_planes(tmp_path, formats):
    batches = formats.write_cifar10(tmp_path, n=1)
    row = batches["test_batch"][b"data"][0]
    img = load_dataset("cifar10", root=tmp_path, split="test").images[0]
    assert img[0, 0, 0] == row[0] and img[0, 0, 1] == row[1] and img[0, 1, 0] == row[32]
    assert img[1, 0, 0] == row[1024] and img[2, 31, 31] == row[3071]


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_str_keys_any_protocol(tmp_path, formats, protocol):
    batches = formats.write_cifar10(tmp_path, byte_keys=False, protocol=protocol)
    ds = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", split="test")  # root = the folder itself
    images, labels = expected(batches, ["test_batch"])
    assert np.array_equal(ds.images.numpy(), images) and ds.labels.tolist() == labels
    assert ds.classes == formats.CIFAR10_NAMES


def test_numpy1_module_names_are_accepted(tmp_path, formats):
    """Files pickled under numpy 1.x name numpy.core.multiarray._reconstruct (the real CIFAR files do)."""
    batch = formats.cifar_batch(4, 0, 10, "labels", byte_keys=True)
    raw = pickle.dumps(batch, protocol=2)
    legacy = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy and b"numpy._core" not in legacy
    got = safe_pickle.loads(legacy)
    assert np.array_equal(got[b"data"], batch[b"data"]) and got[b"labels"] == batch[b"labels"]


def test_cifar100_fine_labels(tmp_path, formats):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = formats.cifar_batch(5, 1, 100, "fine_labels", byte_keys=True)
    test = formats.cifar_batch(2, 2, 100, "fine_labels", byte_keys=True)
    fine = [f"class_{i:03d}".encode() for i in range(100)]
    formats.dump(folder / "train", train)
    formats.dump(folder / "test", test)
    formats.dump(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20})
    ds = load_dataset("cifar100", root=tmp_path)
    assert np.array_equal(ds.images.numpy(), train[b"data"].reshape(5, 3, 32, 32))
    assert ds.labels.tolist() == train[b"fine_labels"] and ds.labels.tolist() != train[b"coarse_labels"]
    assert ds.num_classes == 100 and ds.classes[7] == "class_007" and ds.mean == CIFAR100.mean
    assert load_dataset("cifar100", root=tmp_path, split="test").labels.tolist() == test[b"fine_labels"]


class _Shell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickle_that_runs_a_command_is_refused(tmp_path, formats):
    formats.write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": _Shell(f"touch {marker}"), b"labels": [0]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(safe_pickle.UnsafePickleError, match="system") as err:
        load_dataset("cifar10", root=tmp_path, split="test")
    assert isinstance(err.value, CorruptDataError) and "test_batch" in str(err.value)
    assert not marker.exists()
    pickle.loads(pickle.dumps(evil))  # the payload is live: plain pickle runs it
    assert marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(eval),
    pickle.dumps(getattr),
    pickle.dumps(pickle.Unpickler),
    b"cbuiltins\nexec\n(Vprint(1)\ntR.",
    b"csubprocess\nPopen\n(Vtrue\ntR.",
    b"c_codecs\nencode\n(Vabc\nVrot13\ntR.",
])
def test_restricted_unpickler_refuses_other_globals(payload):
    with pytest.raises(safe_pickle.UnsafePickleError):
        safe_pickle.loads(payload)


def test_malformed_pickle_is_corrupt_data(tmp_path, cifar10_root):
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(CorruptDataError, match="test_batch"):
        load_dataset("cifar10", root=root, split="test")


def test_wrong_shapes_are_reported(tmp_path, formats):
    batches = formats.write_cifar10(tmp_path)
    batch = dict(batches["test_batch"])
    batch[b"data"] = batch[b"data"][:, :100]
    formats.dump(tmp_path / "cifar-10-batches-py" / "test_batch", batch)
    with pytest.raises(CorruptDataError, match=r"\[n, 3072\]"):
        load_dataset("cifar10", root=tmp_path, split="test")
    batch = {**batches["test_batch"], b"labels": [0, 1, 10]}
    formats.dump(tmp_path / "cifar-10-batches-py" / "test_batch", batch)
    with pytest.raises(CorruptDataError, match="labels"):
        load_dataset("cifar10", root=tmp_path, split="test")


def test_missing_lists_places_and_download_instructions(tmp_path, isolated_data_env, monkeypatch):
    monkeypatch.setenv("GRADAUDIT_DATA", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path / "missing")
    msg = str(err.value)
    for place in (tmp_path / "missing", tmp_path / "missing" / "cifar-10-batches-py",
                  tmp_path / "env" / "cifar-10-batches-py",
                  isolated_data_env / "cache" / "gradaudit" / "cifar-10-batches-py"):
        assert str(place) in msg
    assert CIFAR10.url in msg and "download=True" in msg
    with pytest.raises(DataNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100")


def test_incomplete_folder_is_not_found(cifar10_root):
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", root=root)
    assert len(load_dataset("cifar10", root=root, split="test")) == 3  # test split is still complete


def test_env_and_image_size(cifar10_root, monkeypatch):
    root, _ = cifar10_root
    monkeypatch.setenv("GRADAUDIT_DATA", str(root))
    ds = load_dataset("cifar10", split="test", image_size=16)
    assert ds.images.shape == (3, 3, 16, 16)
