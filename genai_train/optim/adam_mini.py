"""Adam-mini: Use Fewer Learning Rates To Gain More (Zhang et al., ICLR 2025).
https://arxiv.org/abs/2406.16793

Reference-exact to ``adam_mini.Adam_mini`` 1.1.1, with the partition decided by module type and shape
(:func:`genai_train.optim.selection.adam_mini_blocks`) instead of name substrings. Parameter p is viewed as
(B, -1) with B its number of blocks, or, for weights stored (in, out) like transformers' ``Conv1D``, its
columns are grouped by a segment id per column (a block = every row of the columns sharing an id: GPT-2's
fused q/k/v is q and k per head, v per output neuron); one second moment per block:

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
    """Adam-mini. ``blocks`` maps id(param) -> number of blocks B (default: 1 = one v for the tensor;
    B == p.numel() is plain Adam, as for biases) or -> a LongTensor of segment ids, one per column of a 2-D
    parameter (ids 0..S-1, each used)."""

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
                spec = blocks.get(id(p), 1)
                if isinstance(spec, torch.Tensor):
                    seg = spec.to(device=p.device, dtype=torch.long)
                    if p.ndim != 2 or seg.shape != (p.shape[1],) or int(seg.min()) != 0:
                        raise ValueError(
                            f"Adam-mini: column segments of shape {tuple(seg.shape)} do not fit a parameter of shape "
                            f"{tuple(p.shape)} (one id per column, from 0)"
                        )
                    counts = torch.bincount(seg)
                    if not bool((counts > 0).all()):
                        raise ValueError("Adam-mini: column segment ids must be 0..S-1 with every id used")
                    self.state[p]["segments"] = seg
                    self.state[p]["blocks"] = len(counts)
                    continue
                b = int(spec)
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
        fused = [
            use_triton(self.kernels, p, "adam_mini_update") and "segments" not in s for p, s in zip(params, states)
        ]
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
        sq = [_block_mean_sq(g, s) for g, s in zip(grads, states)]  # [B, 1] each
        torch._foreach_mul_(vs, b2)
        torch._foreach_add_(vs, sq, alpha=1.0 - b2)
        h = torch._foreach_sqrt(vs)
        torch._foreach_div_(h, math.sqrt(1.0 - b2**k))
        torch._foreach_add_(h, eps)
        torch._foreach_reciprocal_(h)
        torch._foreach_mul_(h, 1.0 / (1.0 - b1**k))  # per-block step size / lr
        for p, m, s, st in zip(params, ms, h, states):
            if "segments" in st:  # each column takes its segment's step size
                p.addcmul_(m, s[st["segments"].long(), 0][None, :], value=-lr)  # (a loaded state is cast to float)
            else:
                p.view(st["blocks"], -1).addcmul_(m.view(st["blocks"], -1), s, value=-lr)


def _block_mean_sq(g: torch.Tensor, state: dict) -> torch.Tensor:
    """Mean of g^2 over each block, [B, 1]: ||g_b||^2 / |b| over rows of the (B, -1) view, or over the columns
    of each segment (all rows)."""
    seg = state.get("segments")
    if seg is not None:
        seg = seg.long()  # Optimizer.load_state_dict casts every state tensor to the parameter's dtype
    if seg is None:
        return (
            torch.linalg.vector_norm(g.reshape(state["blocks"], -1), dim=1, keepdim=True)
            .square_()
            .div_(g.numel() // state["blocks"])
        )
    cols = torch.linalg.vector_norm(g, dim=0).square_()  # [out]
    sums = torch.zeros(state["blocks"], dtype=g.dtype, device=g.device).index_add_(0, seg, cols)
    sizes = torch.bincount(seg, minlength=state["blocks"]).to(g.dtype) * g.shape[0]
    return (sums / sizes)[:, None]
