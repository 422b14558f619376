"""Fixtures for the dataset tests: an environment with no data anywhere, and writers for each file format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from gradaudit.data import fashion_mnist

from _datasets import idx_bytes, write_idx


@pytest.fixture(autouse=True)
def isolated_data_env(tmp_path_factory, monkeypatch):
    """Point every search location at empty temporary folders so no installed data is found by accident; the
    system folders are searched again (their Debian path now points at an empty folder) so tests can put
    fixtures there."""
    empty = tmp_path_factory.mktemp("nowhere")
    monkeypatch.setenv("GRADAUDIT_SYSTEM_DATA", "on")
    monkeypatch.delenv("GRADAUDIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty / "cache"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", empty / "debian-fashion-mnist")
    return empty


@pytest.fixture
def fmnist_arrays():
    """Small Fashion-MNIST-shaped arrays with known pixels: (train images, train labels, test images, test labels)."""
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.array([0, 9, 3, 3, 5, 1], dtype=np.uint8),
            rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([7, 2, 8], dtype=np.uint8))


@pytest.fixture
def fmnist_dir(tmp_path, fmnist_arrays):
    """A folder with the four Fashion-MNIST IDX files: train gzip-compressed, test plain."""
    folder = tmp_path / "fm"
    folder.mkdir()
    xtr, ytr, xte, yte = fmnist_arrays
    write_idx(folder / "train-images-idx3-ubyte.gz", xtr, gz=True)
    write_idx(folder / "train-labels-idx1-ubyte.gz", ytr, gz=True)
    write_idx(folder / "t10k-images-idx3-ubyte", xte)
    write_idx(folder / "t10k-labels-idx1-ubyte", yte)
    return folder


def cifar_batch(n: int, seed: int, num_classes: int, labels_key: str, byte_keys: bool) -> dict:
    """One batch dict in the real CIFAR layout (uint8 data [n, 3072], list of int labels)."""
    rng = np.random.default_rng(seed)
    batch = {"batch_label": "testing batch", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             labels_key: [int(v) for v in rng.integers(0, num_classes, n)],
             "filenames": [f"img_{seed}_{i}.png" for i in range(n)]}
    if labels_key == "fine_labels":
        batch["coarse_labels"] = [int(v) % 20 for v in batch[labels_key]]
    if byte_keys:
        batch = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in batch.items()}
        batch[b"filenames"] = [f.encode() for f in batch[b"filenames"]]
    return batch


def dump(path: Path, obj, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(parent: Path, byte_keys: bool = True, protocol: int = 2, n: int = 3) -> dict[str, dict]:
    """Write ``parent/cifar-10-batches-py`` and return the batch dicts by file name."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i, fname in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[fname] = cifar_batch(n, i, 10, "labels", byte_keys)
        dump(folder / fname, batches[fname], protocol)
    names = [c.encode() for c in CIFAR10_NAMES] if byte_keys else CIFAR10_NAMES
    meta = {"label_names": names, "num_cases_per_batch": n, "num_vis": 3072}
    dump(folder / "batches.meta", {k.encode(): v for k, v in meta.items()} if byte_keys else meta, protocol)
    return batches


@pytest.fixture
def cifar10_root(tmp_path):
    return tmp_path, write_cifar10(tmp_path)


@pytest.fixture
def formats():
    """The file writers above, for tests that build their own fixtures."""
    import types

    return types.SimpleNamespace(idx_bytes=idx_bytes, write_idx=write_idx, cifar_batch=cifar_batch, dump=dump,
                                 write_cifar10=write_cifar10, CIFAR10_NAMES=CIFAR10_NAMES)
