"""Shared fixtures.

The whole suite runs with every default data location switched off (no system dataset folders, an empty user
cache, no ``$GRADAUDIT_DATA``): a test that needs a dataset writes it itself (``fashion_mnist_root`` below, the
writers in ``_datasets.py`` and ``data/conftest.py``) or uses data inside the installed wheels. So the suite
passes on a machine where nothing was installed by hand, and a test that would need such data fails everywhere.
"""

from __future__ import annotations

import pytest
import torch

from _datasets import write_fashion_mnist


@pytest.fixture(scope="session", autouse=True)
def no_installed_data(tmp_path_factory):
    """Hide the system data folders and the user's cache and data folders from the whole session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADAUDIT_SYSTEM_DATA", "off")
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("empty-cache")))
        mp.delenv("GRADAUDIT_DATA", raising=False)
        yield


@pytest.fixture(scope="session")
def fashion_mnist_root(tmp_path_factory):
    """A folder holding ``fashion-mnist/`` with synthetic IDX files in the real format: 2400 training and 1200
    test images, balanced over the 10 classes (enough for the utility module's stratified 2000 / 1000 subsets)."""
    root = tmp_path_factory.mktemp("datasets")
    write_fashion_mnist(root / "fashion-mnist")
    return root


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one thread is faster, and immune to OpenMP spin-waits on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
