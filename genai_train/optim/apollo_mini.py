"""APOLLO-Mini: the rank-1, tensor-wise variant of APOLLO (Zhu et al., MLSys 2025, Sec. 4).
https://arxiv.org/abs/2412.05270

Same update as :class:`~genai_train.optim.apollo.APOLLO` with r = 1, one scaling factor per matrix and
alpha = 128 (entering as sqrt(128)): SGD-level memory for the projected matrices.
"""

from __future__ import annotations

from genai_train.optim.apollo import APOLLO

__all__ = ["APOLLOMini"]


class APOLLOMini(APOLLO):
    """APOLLO with the paper's Mini defaults (rank 1, tensor-wise scaling, alpha 128)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        rank: int = 1,
        update_proj_gap: int = 200,
        scale: float = 128.0,
        scale_front: bool = False,
        norm_growth_limit: float = 1.01,
        seed_base: int = 0,
        kernels: str = "auto",
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            scale_type="tensor",
            scale_front=scale_front,
            norm_growth_limit=norm_growth_limit,
            seed_base=seed_base,
            kernels=kernels,
        )
