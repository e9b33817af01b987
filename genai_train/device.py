"""Device selection (cuda > mps > cpu unless overridden) and the matching autocast."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["select_device", "autocast", "available_devices"]


def available_devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.insert(1 if "cuda" in out else 0, "mps")
    return out


def select_device(pref: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is not there is an error."""
    pref = (pref or "auto").lower()
    if pref == "auto":
        return torch.device(available_devices()[0])
    try:
        dev = torch.device(pref)
    except RuntimeError as e:
        raise ValueError(f"device {pref!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {pref!r} requested but CUDA is not available here; use --device=cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {pref!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and "mps" not in available_devices():
        raise ValueError(f"device {pref!r} requested but MPS is not available here; use --device=cpu or auto")
    return dev


def autocast(device: torch.device | str, enabled: bool = True, dtype: torch.dtype = torch.bfloat16):
    """Autocast to ``dtype`` (bf16 by default; fp16 is the engine's, on CUDA, with a gradient scaler) on CUDA and
    on the CPU (torch's CPU autocast: bf16 matmuls and convolutions, slower than fp32 on CPUs without bf16 units,
    so the trainers enable it there only for an explicit run.precision=bf16); a no-op (fp32) on other devices,
    which ``Run.precision_line`` reports."""
    dev = torch.device(device)
    if enabled and dev.type in ("cuda", "cpu"):
        return torch.autocast(dev.type, dtype=dtype)
    return contextlib.nullcontext()
