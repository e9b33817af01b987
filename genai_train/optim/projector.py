"""Low-rank projections shared by GaLore, APOLLO and Flora, and the projected-Adam skeleton of GaLore and APOLLO.

The projection helpers are small pure functions of tensors and ints, so optimizer state holds only tensors and
ints (``torch.load(weights_only=True)`` works) and a random projection can be regenerated from its seed.

Conventions (ALGORITHMS.md section 1): a weight is viewed as a matrix W of shape (m, n); "tall" means
m >= n. A one-sided projection P keeps the smaller side: (r, n) for tall matrices, (m, r) for wide ones.
"""

from __future__ import annotations

import math

import torch

from genai_train.optim.base import CoreOptimizer, hf_adamw_

__all__ = [
    "matrix_view",
    "is_tall",
    "svd_basis",
    "gaussian",
    "next_seed",
    "split_seed",
    "project",
    "project_back_",
    "projection_shape",
    "reused_workspaces",
    "ProjectedAdam",
]

_INT64_MAX = torch.iinfo(torch.int64).max


def matrix_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` as an (out, in * prod(kernel)) matrix: a view for Linear weights and contiguous conv kernels."""
    return t if t.ndim == 2 else t.view(t.shape[0], -1)


def is_tall(m: int, n: int) -> bool:
    return m >= n


def projection_shape(m: int, n: int, r: int) -> tuple[int, int]:
    """Shape of the one-sided projection P for an (m, n) matrix at rank r (r clipped to min(m, n))."""
    r = min(r, m, n)
    return (r, n) if is_tall(m, n) else (m, r)


def svd_basis(g: torch.Tensor, rank: int) -> torch.Tensor:
    """GaLore's projection: the top-r right (tall) or left (wide) singular vectors of the gradient.

    g: [m, n]. Returns a *contiguous copy* [r, n] (tall) or [m, r] (wide), in g's dtype; the SVD itself
    runs in fp32 (GaLore, Zhao et al. 2024, Alg. 2). A copy, not a slice, so the full min(m, n)^2 factor
    is freed.
    """
    u, _, vh = torch.linalg.svd(g.float(), full_matrices=False)  # u [m, k], vh [k, n], k = min(m, n)
    p = vh[:rank, :] if is_tall(*g.shape) else u[:, :rank]
    return p.to(dtype=g.dtype).contiguous()


def gaussian(
    shape: tuple[int, int], seed: int, device: torch.device, dtype: torch.dtype = torch.float32, rank: int | None = None
) -> torch.Tensor:
    """N(0, 1/r) matrix drawn from a generator seeded with ``seed`` on ``device`` (APOLLO, Flora).

    CPU and CUDA generators give different numbers for the same seed: compare runs on one device type.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    r = rank if rank is not None else min(shape)
    return torch.randn(shape, generator=gen, device=device, dtype=dtype) / math.sqrt(r)


def next_seed(seed: int, adv: int = 15) -> int:
    """The seed after ``seed``: the last of ``adv`` int64 draws of a CPU generator seeded with it
    (the rule APOLLO and Flora use to move to a fresh projection)."""
    gen = torch.Generator().manual_seed(seed)
    return int(torch.randint(0, _INT64_MAX, (adv,), generator=gen)[-1])


def split_seed(seed: int) -> tuple[int, int]:
    """Two seeds derived from one (Flora: left and right projections)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, _INT64_MAX, (2,), generator=gen).tolist()
    return int(a), int(b)


def project(g: torch.Tensor, p: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """R = G P^T (tall, [m, r]) or P^T G (wide, [r, n]) for a one-sided projection P (into ``out`` if given)."""
    a, b = (g, p.t()) if is_tall(*g.shape) else (p.t(), g)
    return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)


def project_back_(w: torch.Tensor, n: torch.Tensor, p: torch.Tensor, alpha: float) -> torch.Tensor:
    """W += alpha * (N P) (tall) or alpha * (P N) (wide), fused into one GEMM into W (w: [m, n] view)."""
    if is_tall(*w.shape):
        return w.addmm_(n, p, alpha=alpha)
    return w.addmm_(p, n, alpha=alpha)


def reused_workspaces(like: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two scratch tensors for each element of ``like``, shared by all elements of one shape, dtype and device.

    GaLore and APOLLO step one matrix at a time through them: the r-dim gradient and its Adam direction are
    still in cache when they are used, and the step's transient memory is two r-dim matrices per shape, not
    two per weight.
    """
    work: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    pairs = []
    for t in like:
        key = (t.shape, t.dtype, t.device)
        if key not in work:
            work[key] = (torch.empty_like(t), torch.empty_like(t))
        pairs.append(work[key])
    return pairs


class ProjectedAdam(CoreOptimizer):
    """The skeleton GaLore and APOLLO share: Adam moments in the projected space [m, r] / [r, n] (with a
    projector slot ``state["proj"]`` of ``projection_shape``) for groups with ``low_rank=True``, the AdamW
    skeleton for the rest, decoupled weight decay after the update. Subclasses implement
    :meth:`_low_rank_step` for the projected matrices."""

    def _init_state(self, group: dict, p: torch.Tensor, state: dict) -> None:
        if group["low_rank"]:
            m, n = matrix_view(p).shape
            pm, pn = projection_shape(m, n, group["rank"])
            shape = (m, pm) if m >= n else (pn, n)
            state["proj"] = torch.zeros((pm, pn), dtype=p.dtype, device=p.device)
            state["exp_avg"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            state["exp_avg_sq"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
        else:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, group: dict, params: list[torch.Tensor], t: int) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        states = [self.state[p] for p in params]
        ms = [s["exp_avg"] for s in states]
        vs = [s["exp_avg_sq"] for s in states]
        grads = [p.grad for p in params]
        if not group["low_rank"]:
            hf_adamw_(params, grads, ms, vs, t + 1, lr, b1, b2, eps, wd)
            return
        gs = [matrix_view(g) for g in grads]  # [m, n] each
        self._low_rank_step(group, params, gs, states, ms, vs, t)
        if wd > 0.0:
            torch._foreach_mul_(params, 1.0 - lr * wd)

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
        """Refresh the projectors when due and update ``params`` (weight decay comes after, in the caller)."""
        raise NotImplementedError
