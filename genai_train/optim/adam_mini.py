"""Adam-mini: Use Fewer Learning Rates To Gain More (Zhang et al., ICLR 2025).
https://arxiv.org/abs/2406.16793

Reference-exact to ``adam_mini.Adam_mini`` 1.1.1, with the partition decided by module type and shape
(:func:`genai_train.optim.selection.adam_mini_blocks`) instead of name substrings. Parameter p is viewed as
(B, -1) with B its number of blocks; one second moment per block:

    W *= 1 - lr wd                                    # decoupled decay first (as the reference)
    m = b1 m + (1-b1) g ;  v_b = b2 v_b + (1-b2) mean_{block b}(g^2)
    h_b = sqrt(v_b) / sqrt(1-b2^k) + eps ;  W -= lr * m / (1-b1^k) / h_b
"""

from __future__ import annotations

import math

import torch

from genai_train.kernels import use_triton
from genai_train.kernels.optim import adam_mini_update_triton
from genai_train.optim.base import CoreOptimizer

__all__ = ["AdamMini"]


class AdamMini(CoreOptimizer):
    """Adam-mini. ``blocks`` maps id(param) -> number of blocks B (default: 1 = one v for the tensor);
    B == p.numel() is plain Adam (biases)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        blocks: dict[int, int] | None = None,
        kernels: str = "auto",
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, low_rank=False)
        super().__init__(params, defaults, kernels=kernels)
        blocks = blocks or {}
        for group in self.param_groups:
            for p in group["params"]:
                b = int(blocks.get(id(p), 1))
                if b < 1 or p.numel() % b:
                    raise ValueError(f"Adam-mini: {b} blocks do not divide a parameter of shape {tuple(p.shape)}")
                self.state[p]["blocks"] = b

    def _init_state(self, group: dict, p: torch.Tensor, state: dict) -> None:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        state["vmean"] = torch.zeros((state["blocks"], 1), dtype=p.dtype, device=p.device)

    def _update(self, group: dict, params: list[torch.Tensor], t: int) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        ms = [s["exp_avg"] for s in states]
        vs = [s["vmean"] for s in states]
        k = t + 1
        fused = [use_triton(self.kernels, p) for p in params]
        for p, g, m, v, s, f in zip(params, grads, ms, vs, states, fused):
            if f:  # Triton: decay, moments and update of each parameter in one kernel (the code below is its twin)
                adam_mini_update_triton(p, g.contiguous(), m, v, s["blocks"], k, lr, b1, b2, eps, wd)
        if all(fused):
            return
        params, grads, ms, vs, states = (
            [x for x, f in zip(xs, fused) if not f] for xs in (params, grads, ms, vs, states)
        )
        if wd > 0.0:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        torch._foreach_lerp_(ms, grads, 1.0 - b1)
        # mean of g^2 over each block, without materialising g^2: ||g_b||^2 / |b|
        sq = [
            torch.linalg.vector_norm(g.reshape(s["blocks"], -1), dim=1, keepdim=True)
            .square_()
            .div_(g.numel() // s["blocks"])
            for g, s in zip(grads, states)
        ]  # [B, 1] each
        torch._foreach_mul_(vs, b2)
        torch._foreach_add_(vs, sq, alpha=1.0 - b2)
        h = torch._foreach_sqrt(vs)
        torch._foreach_div_(h, math.sqrt(1.0 - b2**k))
        torch._foreach_add_(h, eps)
        torch._foreach_reciprocal_(h)
        torch._foreach_mul_(h, 1.0 / (1.0 - b1**k))  # per-block step size / lr
        for p, m, s, st in zip(params, ms, h, states):
            p.view(st["blocks"], -1).addcmul_(m.view(st["blocks"], -1), s, value=-lr)
