"""`OptimConfig`: one dataclass for every optimizer ``build_optimizer`` can make.

Paper defaults; fields a method does not use are ignored by it. ``None`` means "the method's own default"
(resolved by the ``resolved_*`` properties, so ``__post_init__`` never mutates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OptimName = Literal["adamw", "galore", "apollo", "apollo_mini", "adam_mini", "flora"]
OPTIM_NAMES: tuple[str, ...] = ("adamw", "galore", "apollo", "apollo_mini", "adam_mini", "flora")
LOW_RANK_NAMES: tuple[str, ...] = ("galore", "apollo", "apollo_mini", "flora")

# eps defaults of the reference implementations (GaLore/APOLLO copy HF's AdamW: 1e-6).
_DEFAULT_EPS = {"adamw": 1e-8, "galore": 1e-6, "apollo": 1e-6, "apollo_mini": 1e-6, "adam_mini": 1e-8, "flora": 1e-30}
_DEFAULT_SCALE = {"galore": 0.25, "apollo": 1.0, "apollo_mini": 128.0}
_DEFAULT_RANK = {"galore": 128, "apollo": 256, "apollo_mini": 1, "flora": 128}


@dataclass
class OptimConfig:
    """Optimizer choice and hyperparameters (see /work/shared/ALGORITHMS.md section 1)."""

    name: OptimName = field(
        default="adamw", metadata={"help": "optimizer: adamw | galore | apollo | apollo_mini | adam_mini | flora"}
    )
    lr: float = field(
        default=1e-3,
        metadata={"help": "learning rate (papers: 1e-3 AdamW/Adam-mini, 1e-2 GaLore/APOLLO/APOLLO-Mini pre-training)"},
    )
    betas: tuple[float, float] = field(
        default=(0.9, 0.999),
        metadata={"help": "(beta1, beta2) of the first/second moments; Flora uses beta1 for its compressed momentum"},
    )
    eps: float | None = field(
        default=None,
        metadata={
            "help": "denominator eps; None = method default (AdamW/Adam-mini 1e-8, GaLore/APOLLO 1e-6, "
            "Flora 1e-30 = Adafactor eps1)"
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (p -= lr * wd * p)"})
    decay_1d: bool = field(
        default=False, metadata={"help": "also decay 1-D tensors (biases, norm gains); off = the usual no-decay group"}
    )
    rank: int | None = field(
        default=None,
        metadata={
            "help": "projection rank r; None = method default (GaLore 128, APOLLO 256, APOLLO-Mini 1, "
            "Flora 128); clipped to min(m, n) per matrix"
        },
    )
    update_proj_gap: int = field(
        default=200, metadata={"help": "T: refresh the projection every T optimizer steps (GaLore/APOLLO)"}
    )
    scale: float | None = field(
        default=None,
        metadata={
            "help": "alpha: GaLore 0.25, APOLLO 1, APOLLO-Mini 128 (enters APOLLO as sqrt(alpha)); None = default"
        },
    )
    scale_front: bool = field(
        default=False,
        metadata={"help": "APOLLO: multiply by sqrt(alpha) before the norm-growth limiter (the 60M/130M Mini scripts)"},
    )
    norm_growth_limit: float = field(
        default=1.01, metadata={"help": "APOLLO norm-growth limiter gamma (Fira); 0 disables it"}
    )
    target: Literal["blocks", "all_linear"] = field(
        default="blocks",
        metadata={
            "help": "which weights get the low-rank treatment: 'blocks' = Linear/conv weights inside repeated "
            "blocks (children of an nn.ModuleList), 'all_linear' = every Linear/conv weight"
        },
    )
    include_conv: bool = field(
        default=True,
        metadata={"help": "treat conv kernels (out, in, *k) as (out, in*prod(k)) matrices in the low-rank group"},
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "base seed of the random projections (APOLLO, Flora); parameter i (0-based over all "
            "optimizer groups) starts from seed + i + 1, as the reference packages number them"
        },
    )
    kappa: int = field(
        default=1000, metadata={"help": "Flora: resample the projection every kappa steps (momentum transferred)"}
    )
    decay_rate: float = field(default=-0.8, metadata={"help": "Flora/Adafactor: beta2_t = 1 - t^decay_rate"})
    clip_threshold: float = field(default=1.0, metadata={"help": "Flora/Adafactor: update RMS clipping threshold"})
    scale_parameter: bool = field(
        default=False,
        metadata={
            "help": "Flora/Adafactor: multiply lr by max(1e-3, RMS(p)) (flora-opt default True; "
            "off to use a plain lr like the other methods)"
        },
    )
    kernels: Literal["auto", "triton", "torch"] = field(
        default="auto",
        metadata={
            "help": "fused Triton kernels for the element-wise update: auto = on CUDA tensors, the kernels measured "
            "faster than their twins (Adam-mini's; README), torch = the pure-torch twins, triton = every kernel "
            "(CPU only under TRITON_INTERPRET=1)"
        },
    )
    per_layer: bool = field(
        default=False,
        metadata={
            "help": "step each parameter inside backward (post-accumulate-grad hooks) so full gradients never "
            "coexist; all methods but adamw; single process, no grad clipping; with gradient "
            "accumulation the loop sets opt.step_in_backward (see CoreOptimizer.attach_per_layer)"
        },
    )

    def __post_init__(self) -> None:
        if self.name not in OPTIM_NAMES:
            raise ValueError(f"optim.name={self.name!r} is unknown; choose one of {', '.join(OPTIM_NAMES)}")
        if not self.lr > 0:
            raise ValueError(f"optim.lr={self.lr} must be > 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas={self.betas} must be two numbers in [0, 1), e.g. (0.9, 0.999)")
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"optim.eps={self.eps} must be > 0 (or null for the method default)")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay} must be >= 0")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"optim.rank={self.rank} must be >= 1 (or null for the method default)")
        if self.update_proj_gap < 1:
            raise ValueError(f"optim.update_proj_gap={self.update_proj_gap} must be >= 1")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"optim.scale={self.scale} must be > 0 (or null for the method default)")
        if self.norm_growth_limit != 0 and self.norm_growth_limit < 1:
            raise ValueError(f"optim.norm_growth_limit={self.norm_growth_limit} must be >= 1 (or 0 = off)")
        if self.kappa < 1:
            raise ValueError(f"optim.kappa={self.kappa} must be >= 1")
        if not self.decay_rate < 0:
            raise ValueError(f"optim.decay_rate={self.decay_rate} must be < 0 (Adafactor uses -0.8)")
        if not self.clip_threshold > 0:
            raise ValueError(f"optim.clip_threshold={self.clip_threshold} must be > 0")
        if self.target not in ("blocks", "all_linear"):
            raise ValueError(f"optim.target={self.target!r} must be 'blocks' or 'all_linear'")
        if self.per_layer and self.name == "adamw":
            raise ValueError(
                "optim.per_layer is supported for galore, apollo, apollo_mini, adam_mini and "
                "flora, not adamw; set optim.per_layer=false or pick one of those"
            )

    @property
    def resolved_eps(self) -> float:
        return self.eps if self.eps is not None else _DEFAULT_EPS[self.name]

    @property
    def resolved_scale(self) -> float:
        return self.scale if self.scale is not None else _DEFAULT_SCALE.get(self.name, 1.0)

    @property
    def resolved_rank(self) -> int:
        return self.rank if self.rank is not None else _DEFAULT_RANK.get(self.name, 128)

    @property
    def is_low_rank(self) -> bool:
        return self.name in LOW_RANK_NAMES
