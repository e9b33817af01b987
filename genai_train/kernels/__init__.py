"""Triton kernels for the GPU hot paths, each with a pure-torch twin (the reference in tests).

``optim.kernels`` (and the optimizers' ``kernels=`` argument) picks the implementation per tensor:

- ``auto``: the Triton kernel for CUDA tensors when triton is installed and the kernel was measured at least 10%
  faster than its twin at both scales on a GPU (``benchmarks/results/*_kernels.json``; runs on one H200 spread by up
  to 10%): Adam-mini's update and SteepGS's splitting matrices. The others run as twins: the Adam direction's twin is
  torch's own fused Adam (one CUDA launch; the kernel took 4.7-5.9x its time in three runs), and APOLLO's channel
  ratio and Flora's moments tied with theirs (0.85-1.13 in three runs), a Triton launch costing ~20 us against
  ~12 us per torch op;
- ``triton``: always the kernel (CPU tensors only under ``TRITON_INTERPRET=1``, Triton's interpreter, which is how
  the tests check every kernel against its twin on machines without a GPU);
- ``torch``: always the twin.

Kernels are compiled lazily on first use (``triton.jit`` reads ``TRITON_INTERPRET`` when it wraps a function), so
importing this package never needs a GPU or a compiler.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Literal

import torch

__all__ = [
    "KernelMode",
    "KERNEL_MODES",
    "AUTO",
    "triton_available",
    "interpreting",
    "use_triton",
    "jit",
    "active_kernels",
]

KernelMode = Literal["auto", "triton", "torch"]
KERNEL_MODES = ("auto", "triton", "torch")

# the project's kernels by name (as `use_triton` and `genai-train env` know them) and what each computes; the last one
# lives in splatting/strategies/
KERNELS = {
    "adam_direction": "GaLore/APOLLO/APOLLO-Mini moments and normalised update",
    "channel_norm_ratio": "APOLLO channel/tensor scaling",
    "adam_mini_update": "Adam-mini block means and update",
    "adafactor_moments": "Flora's factored second moment",
    "splitting_matrices": "SteepGS's exact estimator: form, lift, accumulate",
}


# run by ``auto`` on CUDA: >= 10% faster than their twins at both scales on an H200 (benchmarks/results/
# optimizers_kernels.json, densification_kernels.json); the others run only with kernels=triton
AUTO = ("adam_mini_update", "splitting_matrices")


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors, slowly."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def use_triton(mode: str, t: torch.Tensor, kernel: str = "") -> bool:
    """Whether ``mode`` runs the Triton kernel named ``kernel`` on tensor ``t`` (else its torch twin); under ``auto``
    only the kernels in ``AUTO`` run (an unnamed kernel counts as one of them)."""
    if mode == "torch":
        return False
    if mode == "auto":
        return t.is_cuda and triton_available() and (not kernel or kernel in AUTO)
    if mode != "triton":
        raise ValueError(f"kernels={mode!r}; choose one of {', '.join(KERNEL_MODES)}")
    if not triton_available():
        raise RuntimeError("optim.kernels=triton but triton is not installed; pip install triton or use auto")
    if not t.is_cuda and not interpreting():
        raise RuntimeError(
            f"optim.kernels=triton on a {t.device.type} tensor: Triton kernels run on CUDA; set TRITON_INTERPRET=1 "
            "to run them in Triton's (slow) interpreter, or use optim.kernels=auto"
        )
    return True


_JITTED: dict[tuple[Callable, bool], Callable] = {}


def jit(fn: Callable) -> Callable:
    """``triton.jit(fn)``, made on first use and again if ``TRITON_INTERPRET`` changed since."""
    key = (fn, interpreting())
    if key not in _JITTED:
        import triton

        _JITTED[key] = triton.jit(fn)
    return _JITTED[key]


def active_kernels(device: torch.device | str) -> list[str]:
    """The names of the kernels ``optim.kernels=auto`` runs on ``device`` (empty: the torch twins run)."""
    if torch.device(device).type != "cuda" or not triton_available():
        return []
    return [k for k in KERNELS if k in AUTO]
