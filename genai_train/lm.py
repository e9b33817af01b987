"""The core's own task: a small byte-level GPT on a text file, trained by the generic engine.

It exercises every shared piece (configs, optimizers, checkpoints, DDP, logging) without any trainer
package, which makes it the demo of the core and the model of the resume and DDP tests.
Default data: a source file of the Python standard library, present on every machine that runs us.

    genai-train lm train --config configs/lm/tiny.yaml --data.path=some.txt
"""

from __future__ import annotations

import json
import math
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genai_train.checkpoint import CheckpointConfig
from genai_train.commands import Command
from genai_train.config import ConfigError
from genai_train.data import ShardedBatchSampler
from genai_train.device import select_device
from genai_train.dist.config import DistConfig
from genai_train.distributed import cleanup, init_distributed
from genai_train.engine import EMAConfig, Trainer
from genai_train.optim import OptimConfig
from genai_train.plot import line_chart
from genai_train.run import LoopConfig, RunConfig, path_field
from genai_train.schedules import ScheduleConfig

DEFAULT_TEXT = "textwrap.py"  # a stdlib module: ~20 KB of real text everywhere Python is installed


@dataclass
class GPTConfig:
    """A decoder-only transformer over bytes (vocab 256)."""

    n_layers: int = field(default=2, metadata={"help": "transformer blocks"})
    d_model: int = field(default=64, metadata={"help": "residual width"})
    n_heads: int = field(default=4, metadata={"help": "attention heads (divide d_model)"})
    seq_len: int = field(default=64, metadata={"help": "context length in bytes"})
    vocab_size: int = field(default=256, metadata={"help": "256 for bytes"})

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"model.n_heads={self.n_heads} must divide model.d_model={self.d_model}")
        if min(self.n_layers, self.d_model, self.seq_len, self.vocab_size) < 1:
            raise ValueError("model sizes must be >= 1")


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.out = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(2)  # [B, T, H, d]
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for name, p in self.named_parameters():  # GPT-2 init: N(0, 0.02), residual outputs scaled by depth
            if p.ndim == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # [B, T, V]


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Next-byte cross-entropy; ``batch`` is [B, T+1] bytes."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


@dataclass
class TextDataConfig:
    path: str = path_field("", f"text file; empty = the stdlib's {DEFAULT_TEXT}")
    batch_size: int = field(default=16, metadata={"help": "sequences per micro-batch per process"})
    val_fraction: float = field(default=0.1, metadata={"help": "tail of the text held out for validation"})

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"data.val_fraction must be in [0, 0.5), got {self.val_fraction}")


def read_text_bytes(path: str) -> torch.Tensor:
    p = Path(path) if path else Path(sysconfig.get_paths()["stdlib"]) / DEFAULT_TEXT
    if not p.is_file():
        raise ConfigError(f"data.path={str(p)!r} is not a file; pass --data.path=FILE with a text file")
    data = p.read_bytes()
    if len(data) < 2:
        raise ConfigError(f"data.path={str(p)!r} holds {len(data)} bytes; it needs at least a few sequences of text")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


class ByteBatches:
    """Non-overlapping windows of ``seq_len + 1`` bytes, drawn by a resumable, rank-sharded sampler."""

    def __init__(
        self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        n = (len(tokens) - 1) // seq_len
        if n < 1:
            raise ConfigError(
                f"the text has {len(tokens)} bytes, fewer than one sequence of {seq_len + 1}; "
                f"use a longer file or a smaller model.seq_len"
            )
        self.windows = tokens[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len)  # [n, T+1]
        self.sampler = ShardedBatchSampler(n, batch_size, seed=seed, rank=rank, world_size=world_size)

    def next_batch(self, device: torch.device) -> torch.Tensor:
        return self.windows[self.sampler.next_indices()].to(device)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


@dataclass
class LMConfig:
    """Byte-level GPT training (the core's demo and test task)."""

    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/lm"))
    model: GPTConfig = field(default_factory=GPTConfig)
    data: TextDataConfig = field(default_factory=TextDataConfig)
    train: LoopConfig = field(default_factory=lambda: LoopConfig(steps=200))
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_steps=20))
    ckpt: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=100))
    ema: EMAConfig = field(default_factory=EMAConfig)
    dist: DistConfig = field(default_factory=DistConfig)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens: torch.Tensor,
    seq_len: int,
    device: torch.device,
    max_batches: int = 8,
    batch_size: int = 32,
) -> float:
    """Mean next-byte loss over the first windows of ``tokens``."""
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        return float("nan")
    windows = tokens[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len)[: max_batches * batch_size]
    model.eval()
    losses = [lm_loss(model, w.to(device)).item() * len(w) for w in windows.split(batch_size)]
    return sum(losses) / len(windows)


def build_trainer(cfg: LMConfig, callbacks=()) -> tuple[Trainer, torch.Tensor]:
    """The model, data and engine for ``cfg``; returns the trainer and the validation bytes."""
    torch.manual_seed(cfg.run.seed)
    tokens = read_text_bytes(cfg.data.path)
    split = len(tokens) - int(len(tokens) * cfg.data.val_fraction)
    dist = init_distributed(select_device(cfg.run.device))
    batches = ByteBatches(
        tokens[:split], cfg.model.seq_len, cfg.data.batch_size, cfg.run.seed, dist.rank, dist.world_size
    )
    trainer = Trainer("lm", GPT(cfg.model), lm_loss, batches, cfg, callbacks=callbacks, dist=dist)
    return trainer, tokens[split:]


def dist_task(cfg: LMConfig):
    """The model, worker trainers and validation of ``cfg`` for ``--dist.algo`` other than ddp."""
    from genai_train.dist.runner import DistTask
    from genai_train.dist.task import TaskTrainer

    tokens = read_text_bytes(cfg.data.path)
    split = len(tokens) - int(len(tokens) * cfg.data.val_fraction)
    device = select_device(cfg.run.device)

    def make_model() -> GPT:
        torch.manual_seed(cfg.run.seed)  # the same initial model as build_trainer's
        return GPT(cfg.model).to(device)

    def make_trainer(i: int, n: int) -> TaskTrainer:
        batches = ByteBatches(tokens[:split], cfg.model.seq_len, cfg.data.batch_size, cfg.run.seed, i, n)
        return TaskTrainer(make_model(), lm_loss, batches, cfg.optim, cfg.schedule, cfg.train, device)

    return DistTask(make_model, make_trainer, lambda m: evaluate(m, tokens[split:], cfg.model.seq_len, device))


def train(cfg: LMConfig) -> dict:
    if cfg.dist.algo != "ddp":
        from genai_train.dist.runner import train_distributed

        return train_distributed("lm", cfg, dist_task(cfg))
    trainer, val = build_trainer(cfg)
    try:
        trainer.fit()
        result = {
            "step": trainer.step,
            "train_loss": trainer.history[-1]["loss"] if trainer.history else None,
            "val_loss": evaluate(trainer.model, val, cfg.model.seq_len, trainer.device),
        }
        if trainer.is_main:
            trainer.logger.log(trainer.step, val_loss=result["val_loss"])
            (trainer.run_dir / "result.json").write_text(json.dumps(result, indent=2))
            trainer.logger.info(f"val loss {result['val_loss']:.4f} nats/byte; run dir {trainer.run_dir}")
        return result
    finally:
        trainer.close()
        cleanup()  # leave the process group (torchrun) so the process exits cleanly


def demo(out_dir: Path) -> dict[str, str]:
    """Under a minute on 2 CPU cores: 300 steps of a tiny byte GPT on a stdlib file."""
    cfg = LMConfig(
        run=RunConfig(dir=str(out_dir / "run"), log_every=5, tensorboard=False),
        train=LoopConfig(steps=300),
        optim=OptimConfig(lr=3e-3),
        ckpt=CheckpointConfig(every=50, resume="auto"),
    )
    result = train(cfg)
    rows = [json.loads(line) for line in (out_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    png = line_chart(
        {"train loss": curve},
        out_dir / "loss.png",
        title="byte-level GPT on a stdlib file",
        xlabel="optimizer step",
        ylabel="loss (nats/byte)",
    )
    metrics = out_dir / "metrics.json"
    metrics.write_text(json.dumps({**result, "curve": curve}, indent=2))
    return {"loss curve": str(png), "metrics": str(metrics), "run": cfg.run.dir}


COMMANDS = {
    "train": Command(
        "train a byte-level GPT on a text file (the core's reference task)",
        train,
        LMConfig,
        shortcuts={"data": "data.path", "steps": "train.steps", "out": "run.dir"},
        example="genai-train lm train --config configs/lm/tiny.yaml --optim.name=adamw",
    ),
}
