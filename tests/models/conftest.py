"""Run these small-tensor tests single-threaded: faster, and immune to OpenMP spin-waits on a busy 2-core box."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
