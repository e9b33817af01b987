"""The configuration of ``genai-train grow``: :class:`GrowConfig` and its growth-specific sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from genai_train.checkpoint import CheckpointConfig
from genai_train.optim import OptimConfig
from genai_train.optim.config import LOW_RANK_NAMES
from genai_train.run import LoopConfig, RunConfig, path_field
from genai_train.schedules import ScheduleConfig
from growth.data import DataConfig
from growth.ligo import LigoConfig
from growth.models import ARCHS
from growth.targets import parse_target

__all__ = ["GrowConfig", "EvalConfig", "GrowScheduleConfig", "SHAPE_KEYS"]

# What the saved state cannot follow: model shapes, the operator's structure, the data position, the optimizers.
SHAPE_KEYS = (
    "small",
    "target",
    "arch",
    "method",
    "data.root",
    "data.seq_len",
    "data.batch_size",
    "data.tokenizer",
    "ligo.steps",
    "ligo.attn_operator",
    "ligo.per_layer",
    "ligo.train_width",
    "ligo.train_depth",
    "ligo.width_init",
    "ligo.optim.name",
    "optim.name",
)


@dataclass
class EvalConfig:
    """Validation loss on the fixed held-out batches."""

    every: int = field(
        default=100, metadata={"help": "every N optimizer steps (0: only when the operator phase ends and at the end)"}
    )

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"eval.every={self.every} must be >= 0")


@dataclass
class GrowScheduleConfig(ScheduleConfig):
    """LR of the training phase; its warm-up defaults to 10% of train.steps (at most 100) after growth."""

    warmup_steps: int | None = field(
        default=None,
        metadata={
            "help": "linear warm-up of the training phase in optimizer steps; null = 10% of train.steps, at most "
            "100: right after growth the optimizer state is fresh, and full-LR first steps make the grown model "
            "worse than its source"
        },
    )

    def __post_init__(self) -> None:
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(
                f"schedule.warmup_steps must be >= 0 (or null: 10% of train.steps), got {self.warmup_steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def resolved(self, train_steps: int) -> ScheduleConfig:
        """The core schedule with the warm-up rule applied."""
        warmup = self.warmup_steps if self.warmup_steps is not None else min(100, train_steps // 10)
        return ScheduleConfig(kind=self.kind, warmup_steps=warmup, min_lr_ratio=self.min_lr_ratio)


@dataclass
class GrowConfig:
    """``genai-train grow``: grow a small checkpoint into a larger model and keep training it."""

    small: str = path_field("", "small model: a Hugging Face-format folder (config.json + weights [+ tokenizer])")
    target: str = field(
        default="",
        metadata={
            "help": "large model, e.g. 'layers=8,d_model=256,heads=8,ffn=1024' (also kv_heads, head_dim); "
            "unset sizes scale with d_model"
        },
    )
    arch: Literal["auto", "gpt2", "bert", "llama", "vit"] = field(
        default="auto",
        metadata={
            "help": "family: auto = the --small checkpoint's (gpt2 without one); a family that differs from "
            "the checkpoint's is an error"
        },
    )
    method: Literal["ligo", "stack", "scratch"] = field(
        default="ligo",
        metadata={"help": "ligo (learned operator) | stack (stacking + Net2Net widening) | scratch (fresh init)"},
    )
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/grow"), metadata={"help": "run folder"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "text data"})
    ligo: LigoConfig = field(default_factory=LigoConfig, metadata={"help": "operator phase"})
    train: LoopConfig = field(
        default_factory=lambda: LoopConfig(steps=1000), metadata={"help": "training after the operator phase"}
    )
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer of the training phase"})
    schedule: GrowScheduleConfig = field(
        default_factory=GrowScheduleConfig,
        metadata={"help": "LR of the training phase (warm-up: 10% of train.steps, at most 100, unless set)"},
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "validation loss"})
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"help": "checkpoints"})
    export: bool = field(default=True, metadata={"help": "write the final model as a HF folder to <run.dir>/hf"})

    def __post_init__(self) -> None:
        if self.arch != "auto" and self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r} is not supported; supported: auto, {', '.join(ARCHS)}")
        if self.target:
            parse_target(self.target)

    def check_inputs(self) -> None:
        """Checks that need the whole config: a run needs --small, or a full --target for scratch."""
        if self.run.precision == "fp16":
            raise ValueError(
                "run.precision=fp16 needs loss scaling, which the growth trainer does not do; use run.precision=bf16 "
                "(bf16 autocast on CUDA and the CPU) or fp32"
            )
        if self.method in ("ligo", "stack") and not self.small:
            raise ValueError(
                f"method={self.method} grows a checkpoint: pass --small FOLDER (a Hugging Face-format "
                f"checkpoint); to train a model from nothing use --method=scratch with a full --target"
            )
        if self.method == "ligo" and self.ligo.optim.name in LOW_RANK_NAMES:
            raise ValueError(
                f"ligo.optim.name={self.ligo.optim.name} projects Linear weights and the operator has none; "
                f"use --ligo.optim.name=adamw or adam_mini (--optim.name picks the training phase's optimizer)"
            )
        if self.optim.per_layer or self.ligo.optim.per_layer:
            raise ValueError(
                "optim.per_layer=true steps inside backward, before gradients are averaged over ranks and "
                "clipped; grow needs optim.per_layer=false and ligo.optim.per_layer=false"
            )
        if not self.small:
            missing = {"n_layers", "d_model", "n_heads", "d_ff"} - set(parse_target(self.target))
            if missing:
                names = {"n_layers": "layers", "d_model": "d_model", "n_heads": "heads", "d_ff": "ffn"}
                raise ValueError(
                    f"without --small the target must give every size; missing "
                    f"{', '.join(sorted(names[m] for m in missing))} in --target "
                    f"(e.g. 'layers=4,d_model=128,heads=4,ffn=512')"
                )
