"""Exponential moving average of model weights, by decay or by half-life in optimizer steps."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["EMA", "decay_from_half_life"]


def decay_from_half_life(half_life_steps: float) -> float:
    """beta such that beta ** half_life = 1/2 (EDM's ``ema_halflife``, counted in steps)."""
    if half_life_steps <= 0:
        raise ValueError(f"EMA half-life must be > 0 steps, got {half_life_steps}")
    return math.exp(math.log(0.5) / half_life_steps)


class EMA:
    """Keeps ``module``, an averaged copy of a model: p_ema <- beta p_ema + (1 - beta) p."""

    def __init__(self, model: nn.Module, decay: float | None = None, half_life_steps: float | None = None):
        if (decay is None) == (half_life_steps is None):
            raise ValueError("EMA needs exactly one of decay or half_life_steps")
        self.decay = decay if decay is not None else decay_from_half_life(half_life_steps)
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {self.decay}")
        self.module = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = _unwrap(model)
        ema_p = [p for p in self.module.parameters()]
        cur_p = [p.detach() for p in src.parameters()]
        floats = [(e, c) for e, c in zip(ema_p, cur_p) if e.dtype.is_floating_point]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [c for _, c in floats], 1.0 - self.decay)
        for e, c in zip(self.module.buffers(), src.buffers()):
            e.copy_(c)
        self.num_updates += 1

    def copy_to(self, model: nn.Module) -> None:
        _unwrap(model).load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["module"])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
