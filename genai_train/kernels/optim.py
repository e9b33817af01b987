"""Fused element-wise parts of the core optimizers' updates (GEMMs and SVDs stay with torch).

Each ``*_triton`` function below has a torch twin in ``genai_train.optim`` (named in its docstring) that it must
match; ``tests/optim/test_kernels.py`` runs both through Triton's interpreter on the CPU and compiled on a GPU. All
tensors contiguous. Coefficients such as 1 - beta2 are computed in Python (double) and passed in: inside a compiled
kernel scalars are float32, where 1 - 0.999 = 0.00099998713 (1.3e-5 off), a drift the twins do not have.
"""

from __future__ import annotations

import math

import torch

from genai_train.kernels import jit, triton_available

if triton_available():
    import triton
    import triton.language as tl
else:  # the kernels are never called without triton (use_triton() says so first)
    triton = tl = None

__all__ = ["adam_direction_triton", "channel_norm_ratio_triton", "adam_mini_update_triton", "mean_sq_ema_triton"]

BLOCK = 1024


def _adam_direction_kernel(g_ptr, m_ptr, v_ptr, out_ptr, n, c1, b2, c2, eps, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = m + c1 * (g - m)  # lerp, as torch._foreach_lerp_ (c1 = 1 - beta1)
    v = v * b2 + c2 * g * g
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + offs, (-m / (tl.sqrt(v) + eps)).to(out_ptr.dtype.element_ty), mask=mask)


def adam_direction_triton(
    g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, b1: float, b2: float, eps: float, out: torch.Tensor
) -> torch.Tensor:
    """Twin: ``genai_train.optim.base.adam_direction``. m, v updated in place; out = -m / (sqrt(v) + eps)."""
    n = g.numel()
    jit(_adam_direction_kernel)[(triton.cdiv(n, BLOCK),)](g, m, v, out, n, 1.0 - b1, b2, 1.0 - b2, eps, BLOCK=BLOCK)
    return out


def _channel_ratio_kernel(a_ptr, b_ptr, out_ptr, L, stride_c, stride_l, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    acc_a = tl.zeros([BLOCK], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < L
        a = tl.load(a_ptr + c * stride_c + offs * stride_l, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c * stride_c + offs * stride_l, mask=mask, other=0.0).to(tl.float32)
        acc_a += a * a
        acc_b += b * b
    ratio = tl.sqrt(tl.sum(acc_b, axis=0)) / (tl.sqrt(tl.sum(acc_a, axis=0)) + 1e-8)
    tl.store(out_ptr + c, ratio)


def channel_norm_ratio_triton(r: torch.Tensor, rt: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Twin: the ratio ``||rt||_d / (||r||_d + 1e-8)`` of ``genai_train.optim.apollo.apollo_scaling``.

    dim 1: one ratio per row ([m, 1]); dim 0: one per column ([1, n]); None: one for the tensor ([])."""
    rows, cols = r.shape
    if dim is None:
        channels, length, stride_c, stride_l, shape = 1, r.numel(), 0, 1, ()
    elif dim == 1:
        channels, length, stride_c, stride_l, shape = rows, cols, cols, 1, (rows, 1)
    else:
        channels, length, stride_c, stride_l, shape = cols, rows, 1, cols, (1, cols)
    out = torch.empty(channels, dtype=torch.float32, device=r.device)
    block = min(BLOCK, triton.next_power_of_2(max(length, 16)))
    jit(_channel_ratio_kernel)[(channels,)](r, rt, out, length, stride_c, stride_l, BLOCK=block)
    return out.to(r.dtype).reshape(shape)


def _adam_mini_kernel(p_ptr, g_ptr, m_ptr, v_ptr, L, lr, c1, b2, c2, eps, bc1, bc2_sqrt, decay, BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    base = blk * L
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + base + offs, mask=offs < L, other=0.0).to(tl.float32)
        acc += g * g
    v = tl.load(v_ptr + blk).to(tl.float32) * b2 + c2 * (tl.sum(acc, axis=0) / L)
    tl.store(v_ptr + blk, v.to(v_ptr.dtype.element_ty))
    step = lr / bc1 / (tl.sqrt(v) / bc2_sqrt + eps)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < L
        p = tl.load(p_ptr + base + offs, mask=mask, other=0.0).to(tl.float32) * decay
        g = tl.load(g_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        m = m + c1 * (g - m)
        tl.store(m_ptr + base + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
        tl.store(p_ptr + base + offs, (p - step * m).to(p_ptr.dtype.element_ty), mask=mask)


def adam_mini_update_triton(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    blocks: int,
    k: int,
    lr: float,
    b1: float,
    b2: float,
    eps: float,
    wd: float,
) -> None:
    """Twin: ``genai_train.optim.adam_mini.AdamMini._update`` for one parameter of ``blocks`` blocks: decay,
    first moment, one second moment per block from the block mean of g^2, the update. All in place."""
    length = p.numel() // blocks
    block = min(BLOCK, triton.next_power_of_2(max(length, 16)))
    bc1, bc2_sqrt = 1.0 - b1**k, math.sqrt(1.0 - b2**k)
    jit(_adam_mini_kernel)[(blocks,)](
        p, g, m, v, length, lr, 1.0 - b1, b2, 1.0 - b2, eps, bc1, bc2_sqrt, 1.0 - lr * wd, BLOCK=block
    )


def _mean_sq_ema_kernel(g_ptr, out_ptr, L, stride_c, stride_l, beta, c_beta, eps1, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < L
        g = tl.load(g_ptr + c * stride_c + offs * stride_l, mask=mask, other=0.0).to(tl.float32)
        acc += tl.where(mask, g * g + eps1, 0.0)
    old = tl.load(out_ptr + c).to(tl.float32)
    tl.store(out_ptr + c, (old * beta + c_beta * (tl.sum(acc, axis=0) / L)).to(out_ptr.dtype.element_ty))


def mean_sq_ema_triton(g: torch.Tensor, row: torch.Tensor, col: torch.Tensor, beta: float, eps1: float) -> None:
    """Twin: the two moment lines of ``genai_train.optim.flora.adafactor_direction`` (Adafactor's factored second
    moment): row = beta row + (1-beta) mean_cols(g^2 + eps1), col likewise over rows. In place; g: [m, n]."""
    rows, cols = g.shape
    jit(_mean_sq_ema_kernel)[(rows,)](
        g, row, cols, cols, 1, beta, 1.0 - beta, eps1, BLOCK=min(BLOCK, triton.next_power_of_2(max(cols, 16)))
    )
    jit(_mean_sq_ema_kernel)[(cols,)](
        g, col, rows, 1, cols, beta, 1.0 - beta, eps1, BLOCK=min(BLOCK, triton.next_power_of_2(max(rows, 16)))
    )
