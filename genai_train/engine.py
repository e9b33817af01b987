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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from genai_train.checkpoint import CheckpointConfig, Checkpointer, prepare_run_dir
from genai_train.config import ConfigError, config_diff, config_to_dict, save_config
from genai_train.device import autocast, select_device
from genai_train.distributed import DistInfo, all_reduce_mean, barrier, init_distributed, wrap_ddp
from genai_train.ema import EMA
from genai_train.logging import RunLogger
from genai_train.optim import build_optimizer, optimizer_state_bytes, param_bytes
from genai_train.schedules import build_scheduler
from genai_train.seed import rng_state, seed_everything, set_rng_state

__all__ = ["RunConfig", "LoopConfig", "EMAConfig", "Trainer", "check_resume_config", "format_bytes"]


@dataclass
class RunConfig:
    """Where a run writes and how it runs."""

    dir: str = field(default="runs/run", metadata={"help": "run directory (config, metrics, checkpoints, images)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps"})
    seed: int = field(default=0, metadata={"help": "seed of python, numpy and torch RNGs"})
    log_every: int = field(default=10, metadata={"help": "log metrics every N optimizer steps"})
    precision: Literal["auto", "fp32", "bf16"] = field(
        default="auto", metadata={"help": "auto = bf16 autocast on CUDA, fp32 elsewhere"})
    tensorboard: bool = field(default=True, metadata={"help": "also write TensorBoard event files"})

    def __post_init__(self):
        if self.log_every < 1:
            raise ValueError(f"run.log_every must be >= 1, got {self.log_every}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"run.precision={self.precision!r}; choose auto, fp32 or bf16")


@dataclass
class LoopConfig:
    """Length of training and what happens in each optimizer step."""

    steps: int = field(default=1000, metadata={"help": "optimizer steps in total"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this; 0 = off"})

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if self.grad_accum < 1:
            raise ValueError(f"train.grad_accum must be >= 1, got {self.grad_accum}")
        if self.grad_clip < 0:
            raise ValueError(f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")


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


# Keys whose change between runs of one run directory is harmless (where to write, how often to log).
# (train.steps is not among them: it stretches a cosine or linear LR schedule, so it is warned about.)
_FREE_KEYS = ("run.dir", "run.log_every", "run.tensorboard", "ckpt.")


def check_resume_config(saved: dict, current: dict, shape_keys: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """Compare the config a checkpoint was written with to the current one.

    A change under any of ``shape_keys`` (e.g. ``"model"``) would not fit the saved tensors: refused with a
    message. Other changes are allowed with a warning; a few bookkeeping keys pass silently.
    """
    diffs = config_diff(saved, current)

    def under(key: str, prefix: str) -> bool:
        return key == prefix or key.startswith(prefix if prefix.endswith(".") else prefix + ".")

    shape = [d for d in diffs if any(under(d[0], k) for k in shape_keys)]
    if shape:
        lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in shape)
        raise ConfigError(f"cannot resume: the config changes parameter shapes since the checkpoint ({lines}); "
                          f"restore those values or start a new --run.dir")
    rest = [d for d in diffs if not any(under(d[0], k) for k in _FREE_KEYS)]
    for k, a, b in rest:
        warnings.warn(f"resuming with a changed config: {k}: {a!r} -> {b!r}", stacklevel=2)
    return rest


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
        self.run_cfg: RunConfig = cfg.run
        self.loop: LoopConfig = cfg.train
        self.ckpt_cfg: CheckpointConfig = cfg.ckpt
        seed_everything(self.run_cfg.seed)
        device = select_device(self.run_cfg.device)
        self.dist = self.dist or init_distributed(device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.run_dir = Path(self.run_cfg.dir)
        if self.is_main:
            prepare_run_dir(self.run_dir, self.task, self.ckpt_cfg.resume)
        barrier()
        self.model.to(self.device)
        self.ddp_model = wrap_ddp(self.model, self.dist)
        if getattr(cfg.optim, "per_layer", False) and self.loop.grad_clip > 0:
            raise ConfigError("optim.per_layer=true updates each weight inside backward, before any global "
                              "gradient norm exists; set train.grad_clip=0 or optim.per_layer=false")
        self.optimizer = build_optimizer(self.model.named_parameters(), cfg.optim, model=self.model)
        self.per_layer = bool(getattr(self.optimizer, "per_layer", False))
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.loop.steps)
        ema_cfg: EMAConfig = cfg.ema
        self.ema = (EMA(self.model, decay=ema_cfg.decay, half_life_steps=ema_cfg.half_life_steps)
                    if ema_cfg.enabled else None)
        self.checkpointer = Checkpointer(self.run_dir / "ckpt", keep=self.ckpt_cfg.keep, task=self.task,
                                         enabled=self.is_main)
        self.logger = RunLogger(self.run_dir, enabled=self.is_main, tensorboard=self.run_cfg.tensorboard)
        self.use_autocast = (self.run_cfg.precision == "bf16"
                             or (self.run_cfg.precision == "auto" and self.device.type == "cuda"))
        self.resumed_from: int | None = None
        if self.ckpt_cfg.resume == "auto":
            self._resume()
        if self.is_main:
            save_config(cfg, self.run_dir)

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "data": self.batches.state_dict(),
            "config": config_to_dict(self.config),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.task_state is not None:
            state["task"] = self.task_state.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        check_resume_config(state["config"], config_to_dict(self.config), self.shape_keys)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if "ema" not in state:
                raise ConfigError("cannot resume: EMA is on now but the checkpoint has none; "
                                  "turn ema off or start a new --run.dir")
            self.ema.load_state_dict(state["ema"])
        self.batches.load_state_dict(state["data"])
        if self.task_state is not None and "task" in state:
            self.task_state.load_state_dict(state["task"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def _resume(self) -> None:
        found = self.checkpointer.load_latest(map_location=self.device)
        if found is None:
            return
        step, state = found
        self.load_state_dict(state)
        self.resumed_from = step
        self.logger.info(f"resumed from {self.checkpointer.dir / f'step_{step:09d}'} (step {step})")

    def save(self) -> Path | None:
        path = self.checkpointer.save(self.step, self.state_dict())
        barrier()
        return path

    # -- loop -----------------------------------------------------------------------------------------
    def _micro_step(self, last: bool) -> torch.Tensor:
        batch = self.batches.next_batch(self.device)
        if self.per_layer:  # update inside backward only once the last micro-batch has accumulated
            self.optimizer.step_in_backward = last
        sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.ddp_model.no_sync()
        with sync:
            with autocast(self.device, self.use_autocast):
                loss = self.loss_fn(self.ddp_model, batch)
            (loss / self.loop.grad_accum).backward()
        return loss.detach()

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; returns device tensors (no host sync)."""
        self.ddp_model.train()
        losses = [self._micro_step(i == self.loop.grad_accum - 1) for i in range(self.loop.grad_accum)]
        out = {"loss": torch.stack(losses).mean()}
        if self.loop.grad_clip > 0:
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.loop.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return out

    def memory_line(self) -> str:
        return (f"memory: parameters {format_bytes(param_bytes(self.model))}, "
                f"optimizer state {format_bytes(optimizer_state_bytes(self.optimizer))} "
                f"({self.config.optim.name})")

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
                        raise FloatingPointError(f"loss became {loss} at step {self.step}; lower optim.lr "
                                                 f"or enable train.grad_clip")
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
        self.logger.close()
