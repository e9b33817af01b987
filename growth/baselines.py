"""Baselines for growth runs, behind the same command as LiGO (``--method``).

- ``scratch``: the large model from a fresh GPT-2-style initialisation.
- ``stack``: StackBERT-style depth stacking (Gong et al. 2019, "Efficient Training of BERT by Progressively
  Stacking", http://proceedings.mlr.press/v97/gong19a.html: large layer i = small layer i mod L) combined
  with Net2Net widening (Chen, Goodfellow, Shlens, "Net2Net", https://arxiv.org/abs/1511.05641): the LiGO
  operator at its initialisation, materialized without training it.
"""

from __future__ import annotations

import torch

from growth.ligo import LigoConfig, LigoOperator, materialize
from growth.models import ModelConfig, Transformer

__all__ = ["scratch_model", "stack_and_widen"]


def scratch_model(tgt: ModelConfig, seed: int = 0) -> Transformer:
    """A freshly initialised target model (seeded)."""
    torch.manual_seed(seed)
    return Transformer(tgt)


def stack_and_widen(
    small: dict[str, torch.Tensor], src: ModelConfig, tgt: ModelConfig, noise: float = 0.01, seed: int = 0
) -> Transformer:
    """Depth by stacking + width by Net2Net copies (fan-out split) + ``noise`` to break symmetry."""
    op = LigoOperator(small, src, tgt, LigoConfig(steps=0, noise=noise), seed=seed)
    return materialize(op)
