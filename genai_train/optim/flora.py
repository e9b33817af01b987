"""Flora: Low-Rank Adapters Are Secretly Gradient Compressors (Hao et al., ICML 2024).
https://arxiv.org/abs/2402.03293

Reference-exact to ``flora_opt.optimizers.torch.Flora`` 0.0.3: Adafactor (factored second moment,
beta2_t = 1 - k^decay_rate, update clipping) whose first moment is kept compressed for the low-rank
matrices. P is a Gaussian N(0, 1/r) regenerated from an integer seed (never stored):

    u = G / sqrt(V_hat) ,  V_hat = R C / mean(R)  (Adafactor, row/col moments of G^2 + eps1)
    low-rank (tall: P [n, r], C [m, r]; wide: P [r, m], C [r, n]):
        u_mix = (1-b1) u + b1 up(C)            up(C) = C P^T | P^T C ;  down(X) = X P | P X
        every kappa steps: C = down'(up(C)) with the next seed's P' (momentum transfer)
        C = b1 C + (1-b1) down(u)
    other tensors: dense momentum m = b1 m + (1-b1) u ;  u_mix = m
    u_mix /= max(1, RMS(u_mix) / clip) ;  W -= lr wd W ;  W -= lr u_mix
    (lr *= max(eps2, RMS(W)) with scale_parameter)

All tensors, low-rank or not, get Adafactor (the reference's behaviour); "low-rank" only decides whether
the momentum is compressed. P is regenerated once per step per matrix (the reference draws it twice).
"""

from __future__ import annotations

import math

import torch

from genai_train.kernels import use_triton
from genai_train.kernels.optim import mean_sq_ema_triton
from genai_train.optim.base import CoreOptimizer
from genai_train.optim.projector import gaussian, matrix_view, next_seed, split_seed

__all__ = ["Flora", "adafactor_direction"]


def adafactor_direction(
    g: torch.Tensor,
    row: torch.Tensor | None,
    col: torch.Tensor | None,
    v: torch.Tensor | None,
    beta2t: float,
    eps1: float,
    kernels: str = "torch",
) -> torch.Tensor:
    """Adafactor's normalised gradient (Shazeer & Stern 2018, Alg. 4), updating the moments in place.

    Factored (g: [m, n], row [m], col [n]):  G^2 moments by rows/columns, u = g / sqrt(row col / mean(row)).
    Unfactored (v like g): u = g / sqrt(v).
    """
    if v is None and use_triton(kernels, g, "adafactor_moments") and g.ndim == 2:
        mean_sq_ema_triton(g.contiguous(), row, col, beta2t, eps1)  # G^2 never materialised
        sq = torch.empty_like(g)  # only the output's buffer
    else:
        sq = g * g
        sq.add_(eps1)
        if v is not None:
            v.mul_(beta2t).add_(sq, alpha=1.0 - beta2t)
            return torch.rsqrt(v).mul_(g)
        row.mul_(beta2t).add_(sq.mean(dim=-1), alpha=1.0 - beta2t)
        col.mul_(beta2t).add_(sq.mean(dim=-2), alpha=1.0 - beta2t)
    r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)  # [m, 1]
    c_factor = col.unsqueeze(-2).rsqrt()  # [1, n]
    return torch.mul(g, r_factor, out=sq).mul_(c_factor)


def _state_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


class Flora(CoreOptimizer):
    """Flora (Adafactor with compressed momentum). ``betas[0]`` is the momentum (0 disables it),
    ``betas[1]`` is unused (Adafactor's beta2_t schedule). Compressed momentum needs min(m, n) >= rank;
    smaller low-rank matrices keep a dense momentum. ``seed_base`` as in APOLLO."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        rank: int = 128,
        kappa: int = 1000,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        weight_decay: float = 0.0,
        scale_parameter: bool = False,
        seed_base: int = 0,
        kernels: str = "auto",
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            rank=rank,
            kappa=kappa,
            eps=tuple(eps),
            clip_threshold=clip_threshold,
            decay_rate=decay_rate,
            weight_decay=weight_decay,
            scale_parameter=scale_parameter,
            low_rank=False,
        )
        super().__init__(params, defaults, seed_base=seed_base, kernels=kernels)

    def _compressed(self, group: dict, p: torch.Tensor) -> bool:
        w = matrix_view(p)
        return group["low_rank"] and group["betas"][0] > 0 and min(w.shape) >= group["rank"]

    def _init_state(self, group: dict, p: torch.Tensor, state: dict) -> None:
        # fp16/bf16 parameters keep fp32 state, like the reference (which upcasts the gradient first)
        kw = dict(dtype=_state_dtype(p), device=p.device)
        factored = group["low_rank"] or p.ndim == 2
        w = matrix_view(p) if group["low_rank"] else p
        if factored:
            state["exp_avg_sq_row"] = torch.zeros(w.shape[0], **kw)
            state["exp_avg_sq_col"] = torch.zeros(w.shape[1], **kw)
        else:
            state["exp_avg_sq"] = torch.zeros(p.shape, **kw)
        if group["betas"][0] > 0:
            if self._compressed(group, p):
                m, n = w.shape
                r = group["rank"]
                state["exp_avg"] = torch.zeros((r, n) if m < n else (m, r), **kw)
            else:  # dense momentum, shaped like the update: the matrix view of a conv kernel in the low-rank group
                state["exp_avg"] = torch.zeros(w.shape, **kw)

    def _projection(self, seed: int, m: int, n: int, r: int, g: torch.Tensor) -> torch.Tensor:
        lseed, rseed = split_seed(seed)
        if m < n:
            return gaussian((r, m), lseed, g.device, g.dtype, rank=r)  # [r, m]
        return gaussian((n, r), rseed, g.device, g.dtype, rank=r)  # [n, r]

    def _update(self, group: dict, params: list[torch.Tensor], t: int) -> None:
        lr, b1, wd = group["lr"], group["betas"][0], group["weight_decay"]
        eps1, eps2 = group["eps"]
        k = t + 1
        beta2t = 1.0 - math.pow(k, group["decay_rate"])
        for p in params:
            state = self.state[p]
            for key, v in state.items():  # load_state_dict() casts state to the parameter's dtype
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != _state_dtype(p):
                    state[key] = v.to(_state_dtype(p))
            g = p.grad.float() if p.grad.dtype in (torch.float16, torch.bfloat16) else p.grad
            w = matrix_view(p) if group["low_rank"] else p
            g = matrix_view(g) if group["low_rank"] else g
            # lr scale from the parameter before the update
            lr_t = (
                torch.clamp(torch.linalg.vector_norm(w) / math.sqrt(w.numel()), min=eps2) * lr
                if group["scale_parameter"]
                else lr
            )
            u = adafactor_direction(
                g,
                state.get("exp_avg_sq_row"),
                state.get("exp_avg_sq_col"),
                state.get("exp_avg_sq"),
                beta2t,
                eps1,
                self.kernels,
            )
            if "exp_avg" in state and self._compressed(group, p):
                m_, n_ = g.shape
                r = group["rank"]
                c = state["exp_avg"]  # [m, r] tall | [r, n] wide
                proj = self._projection(state["seed"], m_, n_, r, g)
                new_proj = proj
                if k % group["kappa"] == 0:  # resample P, transfer the momentum to the new subspace
                    state["seed"] = next_seed(state["seed"])
                    new_proj = self._projection(state["seed"], m_, n_, r, g)
                    up = c @ proj.t() if m_ >= n_ else proj.t() @ c
                    c_t = up @ new_proj if m_ >= n_ else new_proj @ up
                else:
                    c_t = c
                down = u @ new_proj if m_ >= n_ else new_proj @ u  # compressed raw update
                if m_ >= n_:
                    u.addmm_(c, proj.t(), beta=1.0 - b1, alpha=b1)
                else:
                    u.addmm_(proj.t(), c, beta=1.0 - b1, alpha=b1)
                state["exp_avg"] = c_t.mul_(b1).add_(down, alpha=1.0 - b1)
            elif "exp_avg" in state:
                u = state["exp_avg"].lerp_(u, 1.0 - b1)
            # clip the update RMS, then decay and step: W -= lr wd W ; W -= lr u / max(1, RMS(u)/clip)
            rms = torch.linalg.vector_norm(u) / math.sqrt(u.numel())
            coef = lr_t / torch.clamp(rms / group["clip_threshold"], min=1.0)
            if wd != 0:
                w.mul_(1.0 - wd * lr_t)
            w.addcmul_(u.to(w.dtype), coef.to(w.dtype), value=-1.0)
