"""Shared test setup: deterministic, small, CPU."""

import os

import pytest
import torch

os.environ.setdefault("BUILD_NO_CUDA", "1")  # never let gsplat try to compile CUDA code during tests


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest and avoids OpenMP stalls on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
