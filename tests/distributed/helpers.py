"""Tiny LM configs and regions files shared by the dist tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from genai_train.checkpoint import CheckpointConfig
from genai_train.dist.config import DistConfig
from genai_train.engine import EMAConfig, LoopConfig, RunConfig
from genai_train.lm import GPTConfig, LMConfig, TextDataConfig
from genai_train.optim import OptimConfig

ROOT = Path(__file__).resolve().parents[2]
TWO_REGIONS = str(ROOT / "configs" / "dist" / "two_regions.yaml")


def regions_file(path: Path, speeds, bandwidth, latency=None) -> str:
    data = {"worker_speeds": speeds, "bandwidth_gbps": bandwidth}
    if latency is not None:
        data["latency_ms"] = latency
    path.write_text(yaml.safe_dump(data))
    return str(path)


def dist_cfg(run_dir: Path, dist: DistConfig, steps: int = 8, every: int = 0, batch_size: int = 4) -> LMConfig:
    return LMConfig(
        run=RunConfig(dir=str(run_dir), device="cpu", seed=3, log_every=1, tensorboard=False),
        model=GPTConfig(n_layers=1, d_model=32, n_heads=2, seq_len=16),
        data=TextDataConfig(batch_size=batch_size),
        train=LoopConfig(steps=steps, grad_clip=1.0),
        optim=OptimConfig(lr=3e-3, weight_decay=0.1),
        ckpt=CheckpointConfig(every=every, keep=5),
        ema=EMAConfig(),
        dist=dist,
    )
