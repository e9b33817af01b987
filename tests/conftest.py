"""Shared test setup: deterministic, small, CPU."""

import os

import pytest
import torch

os.environ.setdefault("BUILD_NO_CUDA", "1")  # never let gsplat try to compile CUDA code during tests
if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors only in Triton's interpreter; it must be on before triton is imported (its
    # own library functions, tl.sum among them, are wrapped at import). Without CUDA nothing else runs Triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest and avoids OpenMP stalls on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(
    params=[
        pytest.param(
            "interpreter",
            marks=pytest.mark.skipif(
                torch.cuda.is_available(),
                reason="the interpreter runs only where triton was imported with TRITON_INTERPRET=1 (no CUDA)",
            ),
        ),
        pytest.param(
            "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
        ),
    ]
)
def kernel_device(request, monkeypatch) -> torch.device:
    """Where a Triton kernel test runs, once each: Triton's interpreter on CPU tensors (where there is no CUDA:
    triton imported without the interpreter cannot start it later), and compiled on the GPU (where there is one)."""
    if request.param == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        return torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return torch.device("cuda")
