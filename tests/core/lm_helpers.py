"""A tiny LM config shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import torch

from genai_train.checkpoint import CheckpointConfig
from genai_train.engine import EMAConfig, LoopConfig, RunConfig
from genai_train.lm import GPTConfig, LMConfig, TextDataConfig
from genai_train.optim import OptimConfig


def tiny_cfg(
    run_dir: Path, steps: int = 10, every: int = 5, batch_size: int = 4, grad_accum: int = 1, ema: bool = True
) -> LMConfig:
    return LMConfig(
        run=RunConfig(dir=str(run_dir), device="cpu", seed=3, log_every=1, tensorboard=False),
        model=GPTConfig(n_layers=2, d_model=32, n_heads=2, seq_len=16),
        data=TextDataConfig(batch_size=batch_size),
        train=LoopConfig(steps=steps, grad_accum=grad_accum, grad_clip=1.0),
        optim=OptimConfig(lr=3e-3, weight_decay=0.1),
        ckpt=CheckpointConfig(every=every, keep=2),
        ema=EMAConfig(half_life_steps=3.0) if ema else EMAConfig(),
    )


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
