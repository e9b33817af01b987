"""GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection (Zhao et al., ICML 2024).
https://arxiv.org/abs/2403.03507

Reference-exact to ``galore_torch.GaLoreAdamW`` 1.0 (proj_type "std"), see ALGORITHMS.md section 1:

    if t % T == 0:  P = top-r singular vectors of G (right if tall [r, n], left if wide [m, r])
    R = G P^T (tall) | P^T G (wide)                    # r-dim gradient
    M = b1 M + (1-b1) R ;  V = b2 V + (1-b2) R^2       # kept across refreshes (not rotated)
    W -= lr sqrt(1-b2^k)/(1-b1^k) * alpha * (N P | P N),  N = M / (sqrt(V) + eps)
    W -= lr wd W

Parameters outside the low-rank groups get the same AdamW skeleton without projection. P is stored as a
contiguous [r, min-side] copy (the reference keeps a view of the whole SVD factor alive).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from genai_train.optim.base import adam_direction, low_rank_groups
from genai_train.optim.projector import (
    ProjectedAdam,
    matrix_view,
    project,
    project_back_,
    reused_workspaces,
    svd_basis,
)

__all__ = ["GaLore"]


class GaLore(ProjectedAdam):
    """GaLore-AdamW. Groups with ``low_rank=True`` are projected (2-D weights and conv kernels viewed as
    (out, in*k*k)). ``projection="identity"`` replaces the SVD basis by the identity (needs rank >=
    min(m, n)); it turns GaLore into AdamW and exists for tests and ablations."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        rank: int = 128,
        update_proj_gap: int = 200,
        scale: float = 0.25,
        projection: Literal["svd", "identity"] = "svd",
        kernels: str = "auto",
    ) -> None:
        if projection not in ("svd", "identity"):
            raise ValueError(f"GaLore projection={projection!r}: choose 'svd' or 'identity'")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            projection=projection,
            low_rank=False,
        )
        params = low_rank_groups(params, "GaLore", {"proj_type": ("reverse_std", "right", "left", "full")})
        super().__init__(params, defaults, kernels=kernels)

    def _low_rank_step(
        self,
        group: dict,
        params: list[torch.Tensor],
        gs: list[torch.Tensor],
        states: list[dict],
        ms: list[torch.Tensor],
        vs: list[torch.Tensor],
        t: int,
    ) -> None:
        lr, (b1, b2), eps, k = group["lr"], group["betas"], group["eps"], t + 1
        if t % group["update_proj_gap"] == 0:
            for g, s in zip(gs, states):
                if group["projection"] == "identity":
                    if group["rank"] < min(g.shape):
                        raise ValueError(
                            "GaLore projection='identity' needs rank >= min(m, n) "
                            f"(rank {group['rank']}, matrix {tuple(g.shape)})"
                        )
                    s["proj"] = torch.eye(min(g.shape), dtype=g.dtype, device=g.device)
                else:
                    s["proj"] = svd_basis(g, group["rank"])
        alpha = lr * math.sqrt(1.0 - b2**k) / (1.0 - b1**k) * group["scale"]
        for p, g, s, m, v, (r, neg_n) in zip(params, gs, states, ms, vs, reused_workspaces(ms)):
            project(g, s["proj"], out=r)  # [m, r] tall | [r, n] wide
            adam_direction([r], [m], [v], k, b1, b2, eps, out=[neg_n], kernels=self.kernels)
            project_back_(matrix_view(p), neg_n, s["proj"], alpha=alpha)
