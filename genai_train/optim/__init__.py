"""Optimizers: ``build_optimizer(named_parameters, OptimConfig)`` and memory accounting.

``cfg.name``: adamw | galore | apollo | apollo_mini | adam_mini | flora (ALGORITHMS.md section 1).
The low-rank methods project the weights chosen by :func:`~genai_train.optim.selection.low_rank_params`
(module type and shape: Linear/conv weights inside repeated blocks by default); every other tensor gets
the method's full-rank rule inside the same optimizer object (GaLore/APOLLO: their AdamW; Flora:
Adafactor with dense momentum). Adam-mini partitions every tensor by module type.

The selection needs the modules, not only the parameters. Pass the model: ``build_optimizer(model, cfg)``,
or ``build_optimizer(named, cfg, model=model)`` to optimize a subset ``named`` of its parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from genai_train.optim.adam_mini import AdamMini
from genai_train.optim.apollo import APOLLO
from genai_train.optim.apollo_mini import APOLLOMini
from genai_train.optim.base import CoreOptimizer
from genai_train.optim.config import LOW_RANK_NAMES, OPTIM_NAMES, OptimConfig
from genai_train.optim.flora import Flora
from genai_train.optim.galore import GaLore
from genai_train.optim.memory import optimizer_state_bytes, param_bytes
from genai_train.optim.projector import matrix_view
from genai_train.optim.selection import adam_mini_blocks, low_rank_params

__all__ = [
    "OptimConfig",
    "OPTIM_NAMES",
    "build_optimizer",
    "param_groups",
    "optimizer_state_bytes",
    "param_bytes",
    "GaLore",
    "APOLLO",
    "APOLLOMini",
    "AdamMini",
    "Flora",
    "CoreOptimizer",
    "low_rank_params",
    "adam_mini_blocks",
]


def _adamw_groups(named: list[tuple[str, torch.nn.Parameter]], cfg: OptimConfig) -> list[dict]:
    decay = [p for _, p in named if p.ndim >= 2 or cfg.decay_1d]
    no_decay = [p for _, p in named if not (p.ndim >= 2 or cfg.decay_1d)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def _projection_saves(p: torch.Tensor, rank: int) -> bool:
    """Whether GaLore/APOLLO's state of ``p`` at ``rank`` is smaller than AdamW's: moments [max side, r] and
    the projector [r, min side] against two full moments."""
    m, n = matrix_view(p).shape
    return 2 * max(m, n) * rank + rank * min(m, n) < 2 * m * n


def param_groups(named: list[tuple[str, torch.nn.Parameter]], cfg: OptimConfig, model: nn.Module | None) -> list[dict]:
    """Parameter groups for ``cfg.name``: low-rank matrices first (``low_rank=True``), then the
    full-rank tensors with and without weight decay, each in the order of ``named``."""
    if cfg.name not in LOW_RANK_NAMES:
        return _adamw_groups(named, cfg)
    if model is None:
        raise ValueError(
            f"optim.name={cfg.name}: choosing the low-rank matrices needs the model's "
            "modules; call build_optimizer(model, cfg) or build_optimizer(named, cfg, model=model)"
        )
    chosen = low_rank_params(model, cfg.target, cfg.include_conv)
    low = [p for _, p in named if id(p) in chosen]
    if not low:
        where = "inside an nn.ModuleList (repeated blocks)" if cfg.target == "blocks" else "in the model"
        raise ValueError(
            f"optim.name={cfg.name}: no trainable Linear/conv weight {where} to project; "
            "set optim.target=all_linear, or pick optim.name=adamw / adam_mini for this model"
        )
    if cfg.name in ("galore", "apollo"):  # APOLLO-Mini (rank 1) and Flora (factored) always save memory
        big = [(n, p) for n, p in named if id(p) in chosen and not _projection_saves(p, cfg.resolved_rank)]
        if big:
            n, p = big[0]
            warnings.warn(
                f"optim.name={cfg.name}: {len(big)} of {len(low)} matrices stay full-rank (AdamW inside the same "
                f"optimizer): at rank {cfg.resolved_rank} their projected state would not be smaller than AdamW's "
                f"(e.g. {n} {tuple(matrix_view(p).shape)}); a lower optim.rank projects them",
                stacklevel=3,
            )
            chosen -= {id(p) for _, p in big}
            low = [p for _, p in named if id(p) in chosen]
    rest = [(n, p) for n, p in named if id(p) not in chosen]
    groups = [{"params": low, "weight_decay": cfg.weight_decay, "low_rank": True}] if low else []
    return groups + [{**g, "low_rank": False} for g in _adamw_groups(rest, cfg)]


def build_optimizer(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]] | nn.Module,
    cfg: OptimConfig,
    model: nn.Module | None = None,
) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` over the trainable parameters (see the module docstring for ``model``).

    With ``cfg.per_layer`` the returned optimizer steps each parameter inside backward
    (:meth:`CoreOptimizer.attach_per_layer`); for gradient accumulation set ``opt.step_in_backward``
    to False before every backward but the last micro-batch's.
    """
    if isinstance(named_parameters, nn.Module):
        model = model or named_parameters
        named_parameters = named_parameters.named_parameters()
    items = list(named_parameters)
    if any(not (isinstance(it, tuple) and len(it) == 2 and isinstance(it[1], torch.Tensor)) for it in items):
        raise TypeError(
            "build_optimizer takes (name, parameter) pairs: pass model.named_parameters() or the model itself, "
            "not model.parameters()"
        )
    named = [(n, p) for n, p in items if p.requires_grad]
    if not named:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    groups = param_groups(named, cfg, model)
    betas, eps = tuple(cfg.betas), cfg.resolved_eps
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=eps, weight_decay=cfg.weight_decay)
    rank, scale = cfg.resolved_rank, cfg.resolved_scale
    if cfg.name == "galore":
        opt: CoreOptimizer = GaLore(
            groups,
            lr=cfg.lr,
            betas=betas,
            eps=eps,
            weight_decay=cfg.weight_decay,
            rank=rank,
            update_proj_gap=cfg.update_proj_gap,
            scale=scale,
            kernels=cfg.kernels,
        )
    elif cfg.name in ("apollo", "apollo_mini"):
        cls = APOLLO if cfg.name == "apollo" else APOLLOMini
        kw = {"scale_type": "channel"} if cfg.name == "apollo" else {}
        opt = cls(
            groups,
            lr=cfg.lr,
            betas=betas,
            eps=eps,
            weight_decay=cfg.weight_decay,
            rank=rank,
            update_proj_gap=cfg.update_proj_gap,
            scale=scale,
            scale_front=cfg.scale_front,
            norm_growth_limit=cfg.norm_growth_limit,
            seed_base=cfg.seed,
            kernels=cfg.kernels,
            **kw,
        )
    elif cfg.name == "flora":
        opt = Flora(
            groups,
            lr=cfg.lr,
            betas=betas,
            rank=rank,
            kappa=cfg.kappa,
            eps=(eps, 1e-3),
            clip_threshold=cfg.clip_threshold,
            decay_rate=cfg.decay_rate,
            weight_decay=cfg.weight_decay,
            scale_parameter=cfg.scale_parameter,
            seed_base=cfg.seed,
            kernels=cfg.kernels,
        )
    elif cfg.name == "adam_mini":
        if model is None:
            raise ValueError(
                "optim.name=adam_mini: the block partition needs the model's modules; call "
                "build_optimizer(model, cfg) or build_optimizer(named, cfg, model=model)"
            )
        opt = AdamMini(
            groups,
            lr=cfg.lr,
            betas=betas,
            eps=eps,
            weight_decay=cfg.weight_decay,
            blocks=adam_mini_blocks(model),
            kernels=cfg.kernels,
        )
    else:  # unreachable: OptimConfig validates the name
        raise ValueError(f"optim.name={cfg.name!r} is unknown; choose one of {', '.join(OPTIM_NAMES)}")
    if cfg.per_layer:
        opt.attach_per_layer()
    return opt
