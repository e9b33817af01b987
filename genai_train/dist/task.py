"""A worker's own training for any engine task: the task's model, ``loss_fn``, batches and optimizer.

It does what :meth:`genai_train.engine.Trainer.train_step` does for one process (gradient accumulation,
clipping, the optimizer from ``build_optimizer``, the LR schedule), with the schedule's position given by the
caller: under HALoS it is the *global* progress, not this worker's own step count (halos.md section 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from genai_train.optim import OptimConfig, build_optimizer
from genai_train.run import LoopConfig
from genai_train.schedules import ScheduleConfig, lr_factor

__all__ = ["TaskTrainer", "flat_params", "load_flat"]


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters as one flat fp32 vector [n] (a copy), in ``model.parameters()`` order."""
    return parameters_to_vector(model.parameters()).detach().float().clone()


@torch.no_grad()
def load_flat(model: nn.Module, theta: torch.Tensor) -> None:
    """Copy ``theta`` [n] into the parameters in place (``vector_to_parameters`` would make them views of it)."""
    i = 0
    for p in model.parameters():
        p.copy_(theta[i : i + p.numel()].view_as(p))
        i += p.numel()


class TaskTrainer:
    """One worker's model, optimizer and data; ``step(position)`` is one optimizer step at LR-schedule
    position ``position`` (in global batches). State (optimizer, data position) persists across rounds."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        batches: Any,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        loop: LoopConfig,
        device: torch.device | str = "cpu",
    ):
        self.model, self.loss_fn, self.batches, self.loop = model, loss_fn, batches, loop
        self.schedule, self.device = schedule, torch.device(device)
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model.named_parameters(), optim, model=self.model)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.local_steps = 0

    def get_flat(self) -> torch.Tensor:
        return flat_params(self.model).cpu()

    def set_flat(self, theta: torch.Tensor) -> None:
        load_flat(self.model, theta.to(self.device))

    def step(self, position: float) -> float:
        factor = lr_factor(int(position), self.loop.steps, self.schedule)
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * factor
        self.model.train()
        total = 0.0
        for _ in range(self.loop.grad_accum):
            loss = self.loss_fn(self.model, self.batches.next_batch(self.device))
            (loss / self.loop.grad_accum).backward()
            total += loss.detach()
        if self.loop.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.loop.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.local_steps += 1
        return float(total) / self.loop.grad_accum

    def state_dict(self) -> dict:
        return {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "data": self.batches.state_dict(),
            "local_steps": self.local_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["data"])
        self.local_steps = int(state["local_steps"])
