"""Memory accounting: bytes held by optimizer state and by model parameters."""

from __future__ import annotations

import torch
from torch import nn


def _tensor_bytes(obj, seen: set[int]) -> int:
    if isinstance(obj, torch.Tensor):
        # count each storage once (views of one buffer share it)
        key = obj.untyped_storage().data_ptr() if obj.numel() else id(obj)
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    # reference packages keep projector objects in the state: count the tensors they hold
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(_tensor_bytes(v, seen) for v in vars(obj).values())
    return 0


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps in ``opt.state`` (storages counted once, so a slice view
    that keeps a whole SVD factor alive counts the whole factor, as it does in RAM)."""
    seen: set[int] = set()
    return sum(_tensor_bytes(s, seen) for s in opt.state.values())


def param_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
