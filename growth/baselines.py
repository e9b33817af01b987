"""Baselines for growth runs, behind the same command as LiGO (``--method``).

- ``scratch``: the large model from a fresh GPT-2-style initialisation.
- ``stack``: StackBERT-style depth stacking (Gong et al. 2019, "Efficient Training of BERT by Progressively
  Stacking", http://proceedings.mlr.press/v97/gong19a.html: large layer i = small layer i mod L) combined
  with Net2Net widening (Chen, Goodfellow, Shlens, "Net2Net", https://arxiv.org/abs/1511.05641): the LiGO
  operator at its stacking + Net2Net initialisation (whatever ``ligo.depth_init``/``width_init`` say when not
  ``auto``), materialized without training it.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from growth.ligo import LigoConfig, LigoOperator, materialize
from growth.models import ModelConfig, Transformer

__all__ = ["scratch_model", "stack_and_widen", "stack_config"]


def stack_config(cfg: LigoConfig) -> LigoConfig:
    """The stacking baseline's operator init: ``auto`` means stacking + Net2Net, never the function-preserving
    start that ``auto`` picks for LiGO at non-multiple depths."""
    return replace(
        cfg,
        depth_init="stack" if cfg.depth_init == "auto" else cfg.depth_init,
        width_init="net2net" if cfg.width_init == "auto" else cfg.width_init,
    )


def scratch_model(tgt: ModelConfig, seed: int = 0) -> Transformer:
    """A freshly initialised target model (seeded)."""
    torch.manual_seed(seed)
    return Transformer(tgt)


def stack_and_widen(
    small: dict[str, torch.Tensor],
    src: ModelConfig,
    tgt: ModelConfig,
    noise: float = 0.01,
    seed: int = 0,
    depth_init: str = "stack",
) -> Transformer:
    """Depth by stacking (or ``interpolate``) + width by Net2Net copies (fan-out split) + ``noise``."""
    op = LigoOperator(small, src, tgt, stack_config(LigoConfig(steps=0, noise=noise, depth_init=depth_init)), seed=seed)
    return materialize(op)
