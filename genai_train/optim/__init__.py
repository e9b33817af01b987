"""Optimizers: ``build_optimizer(named_parameters, OptimConfig)`` and memory accounting.

AdamW with the usual decay/no-decay split; the low-rank methods (GaLore, APOLLO, APOLLO-Mini, Flora) and
Adam-mini plug in behind the same call.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from genai_train.optim.config import OPTIM_NAMES, OptimConfig
from genai_train.optim.memory import optimizer_state_bytes, param_bytes

__all__ = ["OptimConfig", "OPTIM_NAMES", "build_optimizer", "optimizer_state_bytes", "param_bytes"]


def _adamw_groups(named: list[tuple[str, torch.nn.Parameter]], cfg: OptimConfig) -> list[dict]:
    decay = [p for _, p in named if p.ndim >= 2 or cfg.decay_1d]
    no_decay = [p for _, p in named if not (p.ndim >= 2 or cfg.decay_1d)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
                    cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` over the trainable parameters."""
    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    if not named:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    if cfg.name == "adamw":
        return torch.optim.AdamW(_adamw_groups(named, cfg), lr=cfg.lr, betas=cfg.betas,
                                 eps=cfg.resolved_eps, weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name={cfg.name!r} is not available in this build; use optim.name=adamw")
