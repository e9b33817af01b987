"""The generic training loop: everything stateful saves and restores itself, so ``fit()`` stays short.

A task supplies a model, a ``loss_fn(model, batch) -> scalar tensor`` and a batch source with
``next_batch(device)``, ``state_dict()`` and ``load_state_dict()``; the engine does device placement, DDP,
gradient accumulation, clipping, autocast, LR schedule, EMA, logging and exact-resume checkpoints.
Resume restores model, EMA, optimizer, scheduler, RNG states, data position, step and task state, so a run
resumed at step k continues exactly as the uninterrupted run would have (same device, same world size).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from genai_train.checkpoint import CheckpointConfig
from genai_train.config import ConfigError
from genai_train.device import autocast
from genai_train.distributed import DistInfo, all_reduce_mean, wrap_ddp
from genai_train.ema import EMA
from genai_train.optim import build_optimizer, optimizer_state_bytes, param_bytes
from genai_train.run import LoopConfig, Run, RunConfig, check_resume_config
from genai_train.schedules import build_scheduler

__all__ = ["RunConfig", "LoopConfig", "EMAConfig", "Trainer", "check_resume_config", "format_bytes"]


@dataclass
class EMAConfig:
    """Exponential moving average of the weights; off when both fields are null."""

    half_life_steps: float | None = field(default=None, metadata={"help": "EMA half-life in optimizer steps"})
    decay: float | None = field(default=None, metadata={"help": "EMA decay per step (instead of half-life)"})

    def __post_init__(self):
        if self.half_life_steps is not None and self.decay is not None:
            raise ValueError("ema: set half_life_steps or decay, not both")
        if self.half_life_steps is not None and self.half_life_steps <= 0:
            raise ValueError(f"ema.half_life_steps must be > 0, got {self.half_life_steps}")
        if self.decay is not None and not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {self.decay}")

    @property
    def enabled(self) -> bool:
        return self.half_life_steps is not None or self.decay is not None


class Batches(Protocol):
    def next_batch(self, device: torch.device) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass
class Trainer:
    """Runs ``loop.steps`` optimizer steps of ``loss_fn`` over ``batches``; resumes from ``run.dir``."""

    task: str
    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    batches: Batches
    config: Any  # the task's full config dataclass; needs .run, .train, .optim, .schedule, .ckpt, .ema
    shape_keys: Sequence[str] = ("model",)
    task_state: Any = None  # optional object with state_dict()/load_state_dict(), saved with each checkpoint
    callbacks: Sequence[Callable[[Trainer, int], None]] = ()  # called after each optimizer step with the step
    dist: DistInfo | None = None
    step: int = 0
    history: list[dict] = field(default_factory=list)

    def __post_init__(self):
        cfg = self.config
        # the optimizer's state follows its kind and the matrices it projects: a change there cannot resume
        optim_keys = ("optim.name", "optim.rank", "optim.target", "optim.include_conv")
        self.run = Run(self.task, cfg, shape_keys=(*self.shape_keys, *optim_keys), dist=self.dist)
        self.run_cfg: RunConfig = cfg.run
        self.loop: LoopConfig = cfg.train
        self.ckpt_cfg: CheckpointConfig = cfg.ckpt
        self.dist, self.device, self.is_main, self.run_dir = (
            self.run.dist,
            self.run.device,
            self.run.is_main,
            self.run.dir,
        )
        self.checkpointer = self.run.checkpointer
        self.model.to(self.device)
        self.ddp_model = wrap_ddp(self.model, self.dist)
        if getattr(cfg.optim, "per_layer", False) and self.loop.grad_clip > 0:
            raise ConfigError(
                "optim.per_layer=true updates each weight inside backward, before any global "
                "gradient norm exists; set train.grad_clip=0 or optim.per_layer=false"
            )
        self.optimizer = build_optimizer(self.model.named_parameters(), cfg.optim, model=self.model)
        self.per_layer = bool(getattr(self.optimizer, "per_layer", False))
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.loop.steps)
        ema_cfg: EMAConfig = cfg.ema
        self.ema = (
            EMA(self.model, decay=ema_cfg.decay, half_life_steps=ema_cfg.half_life_steps) if ema_cfg.enabled else None
        )
        self.use_autocast = self.run.use_autocast
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        self.scaler = torch.amp.GradScaler("cuda") if self.run.autocast_dtype == torch.float16 else None
        if self.scaler is not None and self.per_layer:
            raise ConfigError(
                "run.precision=fp16 scales the loss and unscales gradients before the step, but optim.per_layer=true "
                "steps inside backward on scaled gradients; use run.precision=bf16 or optim.per_layer=false"
            )
        self.resumed_from: int | None = self.run.resumed_from
        if self.resumed_from is not None and self.ema is not None and "ema" not in self.run.checkpoint:
            raise ConfigError(
                "cannot resume: EMA is on now but the checkpoint has none; turn ema off or start a new --run.dir"
            )
        self.step = self.run.restore(**self._stateful())
        self.logger = self.run.logger
        self.logger.info(self.run.precision_line())

    # -- state ----------------------------------------------------------------------------------------
    def _stateful(self) -> dict:
        objs = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "data": self.batches}
        if self.scaler is not None:
            objs["scaler"] = self.scaler
        if self.ema is not None:
            objs["ema"] = self.ema
        if self.task_state is not None:
            objs["task"] = self.task_state
        return objs

    def save(self) -> Path | None:
        return self.run.save(self.step, **self._stateful())

    # -- loop -----------------------------------------------------------------------------------------
    def _micro_step(self, last: bool) -> torch.Tensor:
        batch = self.batches.next_batch(self.device)
        if self.per_layer:  # update inside backward only once the last micro-batch has accumulated
            self.optimizer.step_in_backward = last
        sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.ddp_model.no_sync()
        with sync:
            with autocast(self.device, self.use_autocast, self.run.autocast_dtype or torch.bfloat16):
                loss = self.loss_fn(self.ddp_model, batch)
            scaled = loss / self.loop.grad_accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach()

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; returns device tensors (no host sync)."""
        self.ddp_model.train()
        losses = [self._micro_step(i == self.loop.grad_accum - 1) for i in range(self.loop.grad_accum)]
        out = {"loss": torch.stack(losses).mean()}
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip and step on the true gradients
        if self.loop.grad_clip > 0:
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.loop.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step when a gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return out

    def memory_line(self) -> str:
        return (
            f"memory: parameters {format_bytes(param_bytes(self.model))}, "
            f"optimizer state {format_bytes(optimizer_state_bytes(self.optimizer))} "
            f"({self.config.optim.name})"
        )

    def fit(self) -> list[dict]:
        """Train to ``train.steps``; returns the logged rows of this call."""
        total, every = self.loop.steps, self.ckpt_cfg.every
        bar = self.logger.progress(total, initial=self.step, desc=self.task)
        try:
            while self.step < total:
                out = self.train_step()
                if self.step == 1 or self.resumed_from == self.step - 1:
                    self.logger.info(self.memory_line())
                if self.step % self.run_cfg.log_every == 0 or self.step == total:
                    loss = all_reduce_mean(out["loss"]).item()  # host sync only on logging steps
                    if not math.isfinite(loss):
                        raise FloatingPointError(
                            f"loss became {loss} at step {self.step}; lower optim.lr or enable train.grad_clip"
                        )
                    row = {"loss": loss, "lr": self.scheduler.get_last_lr()[0]}
                    if "grad_norm" in out:
                        row["grad_norm"] = out["grad_norm"].item()
                    row = self.logger.log(self.step, **row)
                    self.history.append(row)
                    bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)
                for cb in self.callbacks:
                    cb(self, self.step)
                if (every > 0 and self.step % every == 0) or self.step == total:
                    self.save()
        finally:
            bar.close()
        return self.history

    def close(self) -> None:
        self.run.close()
