"""APOLLO: SGD-like Memory, AdamW-level Performance (Zhu et al., MLSys 2025).
https://arxiv.org/abs/2412.05270

Reference-exact to ``apollo_torch.APOLLOAdamW`` 1.0.3 (proj "random", proj_type "std"), see
ALGORITHMS.md section 1:

    if t % T == 0:  P = randn((r, n) tall | (m, r) wide, seed) / sqrt(r);  seed = next_seed(seed)
    R = G P^T | P^T G ;  M, V Adam moments of R ;  Rt = M / (sqrt(V) + eps)
    s = ||Rt||_d / (||R||_d + 1e-8)   channel: one factor per row (tall) or column (wide)
                                      tensor:  one factor for the matrix (APOLLO-Mini)
    U = G * s ;  norm-growth limiter (Fira, gamma 1.01): U /= max(||U|| / prev, gamma) / gamma
    W -= lr sqrt(1-b2^k)/(1-b1^k) * sqrt(alpha) * U ;  W -= lr wd W

U is never materialised: ||U|| comes from the row/column norms of G and the update is one fused
``addcmul`` of G with the per-channel factor. Parameters outside the low-rank groups get GaLore's AdamW.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from genai_train.kernels import use_triton
from genai_train.kernels.optim import channel_norm_ratio_triton
from genai_train.optim.base import adam_direction, low_rank_groups
from genai_train.optim.projector import (
    ProjectedAdam,
    gaussian,
    matrix_view,
    next_seed,
    project,
    reused_workspaces,
)

__all__ = ["APOLLO", "apollo_scaling"]


def _norms(x: torch.Tensor, dim: int) -> torch.Tensor:
    """L2 norms along ``dim`` (keepdim); column norms via a contiguous reduction, which is much faster on
    CPU than a strided ``vector_norm(dim=0)``."""
    if dim == 1:
        return torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.square(x).sum(dim=0, keepdim=True).sqrt_()


def apollo_scaling(
    r: torch.Tensor,
    rt: torch.Tensor,
    g: torch.Tensor,
    scale_type: Literal["channel", "tensor"],
    kernels: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """APOLLO's gradient scaling factor s (Zhu et al. 2025, Eq. 5-6) and ||G * s||_F.

    r, rt: [m, r] (tall) or [r, n] (wide) projected gradient and its Adam update (only norms are used, so
    the sign of rt does not matter); g: [m, n].
    Channel-wise: s [m, 1] (tall) or [1, n] (wide), one factor per channel of the larger side.
    ``kernels``: where the ratio of norms runs (:mod:`genai_train.kernels`; its torch twin is the code below).
    """
    triton = use_triton(kernels, r, "channel_norm_ratio")
    if scale_type == "tensor":
        if triton:
            s = channel_norm_ratio_triton(r, rt, None)
        else:
            s = torch.linalg.vector_norm(rt) / (torch.linalg.vector_norm(r) + 1e-8)  # []
        return s, s * torch.linalg.vector_norm(g)
    d = 1 if g.shape[0] >= g.shape[1] else 0
    if triton:
        s = channel_norm_ratio_triton(r, rt, d)
    else:
        s = _norms(rt, d) / (_norms(r, d) + 1e-8)  # [m, 1] | [1, n]
    return s, torch.linalg.vector_norm(s * _norms(g, d))


class APOLLO(ProjectedAdam):
    """APOLLO-AdamW (``scale_type="channel"``) and APOLLO-Mini (rank 1, ``scale_type="tensor"``,
    scale 128). ``seed_base``: parameter i (0-based, over all groups) starts from seed seed_base + i + 1,
    as in the reference. ``norm_growth_limit`` 0 disables the limiter; ``scale_front`` applies
    sqrt(alpha) before it (the APOLLO-Mini 60M/130M scripts)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        rank: int = 256,
        update_proj_gap: int = 200,
        scale: float = 1.0,
        scale_type: Literal["channel", "tensor"] = "channel",
        scale_front: bool = False,
        norm_growth_limit: float = 1.01,
        seed_base: int = 0,
        kernels: str = "auto",
    ) -> None:
        if scale_type not in ("channel", "tensor"):
            raise ValueError(f"APOLLO scale_type={scale_type!r}: choose 'channel' or 'tensor'")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            scale_type=scale_type,
            scale_front=scale_front,
            norm_growth_limit=norm_growth_limit,
            low_rank=False,
        )
        params = low_rank_groups(
            params, "APOLLO", {"proj": ("svd",), "proj_type": ("reverse_std", "right", "left", "full")}
        )
        super().__init__(params, defaults, seed_base=seed_base, kernels=kernels)

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
                shape = s["proj"].shape
                r = shape[0] if g.shape[0] >= g.shape[1] else shape[1]
                s["proj"] = gaussian(tuple(shape), s["seed"], g.device, rank=r).to(g.dtype)
                s["seed"] = next_seed(s["seed"])
        step_size = lr * math.sqrt(1.0 - b2**k) / (1.0 - b1**k)
        sqrt_alpha = math.sqrt(group["scale"])
        gamma = group["norm_growth_limit"]
        front = group["scale_front"]
        for p, g, s, m, v, (r, rt) in zip(params, gs, states, ms, vs, reused_workspaces(ms)):
            project(g, s["proj"], out=r)  # [m, r] | [r, n]
            adam_direction([r], [m], [v], k, b1, b2, eps, out=[rt], kernels=self.kernels)  # -Rt: only its norms count
            coef, u_norm = apollo_scaling(r, rt, g, group["scale_type"], self.kernels)
            if front:
                coef, u_norm = coef * sqrt_alpha, u_norm * sqrt_alpha
            if gamma > 0:
                if "prev_norm" in s:
                    limiter = torch.clamp(u_norm / (s["prev_norm"] + 1e-8), min=gamma) / gamma
                    coef = coef / limiter
                    s["prev_norm"] = u_norm / limiter
                else:
                    s["prev_norm"] = u_norm.detach().clone()
            if not front:
                coef = coef * sqrt_alpha
            matrix_view(p).addcmul_(g, coef, value=-step_size)
