"""The splatting trainer's optimizers, one per Gaussian attribute: Adam, selective Adam and Adam-mini.

``--optim.name`` picks one; every attribute (means, scales, quats, opacities, sh0, shN) gets its own
optimizer with its own learning rate, and every per-Gaussian state tensor keeps the Gaussians along its
first dimension, so the densification ops (``splatting/strategies/ops.py``) add, copy and delete its rows
with the parameter's (new rows start at zero).

- ``adam``: ``torch.optim.Adam`` (gsplat's ``simple_trainer``; eps 1e-15).
- ``selective_adam``: Adam that updates only the Gaussians the step's views see (render radii > 0), as
  gsplat's ``SelectiveAdam`` (Taming 3DGS, https://arxiv.org/abs/2406.15643): the parameters and both moments
  of the other rows stay bit-identical. The step count is one per attribute and advances every step (as
  ``torch.optim.Adam``'s does), and the update is bias-corrected with it, so with every Gaussian visible this
  is Adam exactly. (gsplat's CUDA kernel applies no bias correction; its step count never advances.)
- ``adam_mini``: Adam-mini (https://arxiv.org/abs/2406.16793) with one block per Gaussian and attribute:
  the first moment is kept per float as in Adam, the second moment is one number per Gaussian and attribute,
  the EMA of the mean squared gradient of that Gaussian's floats. State: (1 + 1/k) x the parameters instead
  of Adam's 2x, k = floats per Gaussian in the attribute (3 for means, 45 for shN at SH degree 3).

The update rules are small pure functions below; the classes only loop over their (one-tensor) groups.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = [
    "OptimName",
    "OPTIMIZERS",
    "SelectiveAdam",
    "AdamMini",
    "build_optimizers",
    "visibility",
    "row_mean_square",
    "adam_moments_",
    "adam_update_",
    "state_bytes",
]

OptimName = Literal["adam", "selective_adam", "adam_mini"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimName)
EPS = 1e-15  # gsplat's simple_trainer (its means LR is tiny, so a larger eps would damp their updates)


def row_mean_square(g: Tensor) -> Tensor:
    """Mean of g^2 over each row's floats (Adam-mini's block statistic, one block per Gaussian).

    g [N, ...] -> [N, 1, ...] (kept dims, so it broadcasts against g); zeros where a row has no floats."""
    dims = tuple(range(1, g.ndim))
    if not dims:  # [N]: one float per row, g^2 itself
        return g * g
    k = max(1, g[0].numel())
    return (g * g).sum(dim=dims, keepdim=True) / k


def adam_moments_(m: Tensor, v: Tensor, g: Tensor, sq: Tensor, beta1: float, beta2: float) -> None:
    """Adam's moment EMAs in place (Kingma & Ba, Algorithm 1): m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) sq.

    ``sq`` is g^2 for Adam, or the per-row mean of g^2 for Adam-mini (then v is [N, 1, ...])."""
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).add_(sq, alpha=1 - beta2)


def adam_update_(p: Tensor, m: Tensor, v: Tensor, lr: float, step: int, beta1: float, beta2: float, eps: float):
    """p <- p - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps): the bias-corrected Adam step (v broadcasts)."""
    bc1 = 1 - beta1**step
    bc2_sqrt = (1 - beta2**step) ** 0.5
    p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(eps), value=-lr / bc1)


def _single_param(group: dict, cls: str) -> Tensor:
    if len(group["params"]) != 1:
        raise ValueError(f"{cls} keeps one tensor per group (one Gaussian attribute); got {len(group['params'])}")
    return group["params"][0]


class SelectiveAdam(torch.optim.Optimizer):
    """Adam on the rows (Gaussians) of ``visible`` only; the other rows' parameters and moments are untouched."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = EPS):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None, *, visible: Tensor | None = None):
        """One update of the rows where ``visible`` [N] (bool) is true."""
        if closure is not None:
            raise ValueError("SelectiveAdam.step takes no closure; pass visible=[N] (the step's visible Gaussians)")
        if visible is None:
            raise ValueError(
                "SelectiveAdam.step needs visible=[N], the Gaussians the step's views see (render radii > 0); "
                "use optim.name=adam to update every Gaussian"
            )
        for group in self.param_groups:
            p = _single_param(group, "SelectiveAdam")
            if p.grad is None:
                continue
            if visible.shape != p.shape[:1]:
                raise ValueError(f"visible has shape {tuple(visible.shape)}, the parameter {tuple(p.shape[:1])} rows")
            st = self.state[p]
            if not st:
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
            st["step"] += 1
            beta1, beta2 = group["betas"]
            vis = visible.reshape((-1,) + (1,) * (p.ndim - 1))  # [N, 1, ...]
            one = vis.to(p.dtype)  # 1 visible, 0 hidden
            # Adam's three updates with each row's coefficients masked: a hidden row gets m + 0 (g - m), 1 x v + 0
            # and p - 0, i.e. exactly its old values (gradients are finite: the trainer skips other steps)
            m, v, g = st["exp_avg"], st["exp_avg_sq"], p.grad
            m.lerp_(g, torch.where(vis, 1 - beta1, 0.0).to(p))
            v.mul_(torch.where(vis, beta2, 1.0).to(p)).addcmul_(g, g * one, value=1 - beta2)
            adam_update_(p, m * one, v, group["lr"], float(st["step"]), beta1, beta2, group["eps"])
        return None


class AdamMini(torch.optim.Optimizer):
    """Adam with one second moment per Gaussian (row) and attribute, the first moment per float."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = EPS):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("AdamMini.step takes no closure")
        for group in self.param_groups:
            p = _single_param(group, "AdamMini")
            if p.grad is None:
                continue
            st = self.state[p]
            if not st:
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros_like(p)  # [N, ...]
                st["exp_avg_sq"] = torch.zeros((p.shape[0],) + (1,) * (p.ndim - 1), dtype=p.dtype, device=p.device)
            st["step"] += 1
            beta1, beta2 = group["betas"]
            adam_moments_(st["exp_avg"], st["exp_avg_sq"], p.grad, row_mean_square(p.grad), beta1, beta2)
            adam_update_(p, st["exp_avg"], st["exp_avg_sq"], group["lr"], float(st["step"]), beta1, beta2, group["eps"])
        return None


def build_optimizers(
    params: torch.nn.ParameterDict, name: str, rates: dict[str, float]
) -> dict[str, torch.optim.Optimizer]:
    """One optimizer ``name`` per attribute, each with one group (``lr`` from ``rates``, ``name`` = the key)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    cls = {"adam": torch.optim.Adam, "selective_adam": SelectiveAdam, "adam_mini": AdamMini}[name]
    missing = [k for k in params.keys() if k not in rates]
    if missing:
        raise ValueError(f"no learning rate for {missing}; the splatting optimizers know {sorted(rates)}")
    return {k: cls([{"params": [params[k]], "lr": rates[k], "name": k}], eps=EPS) for k in params.keys()}


def visibility(infos: list[dict], n: int) -> Tensor:
    """[N] bool: the Gaussians any of the step's views sees (render radii > 0), for ``selective_adam``."""
    masks = []
    for info in infos:
        radii = info.get("radii")
        if radii is None:
            raise ValueError(
                "optim.name=selective_adam needs each render's visibility (info['radii']), and this renderer "
                "gives none; use optim.name=adam or adam_mini, or render.backend=torch"
            )
        if radii.shape[1] != n:
            raise ValueError(f"render radii cover {radii.shape[1]} Gaussians, the model has {n}")
        vis = radii > 0
        vis = vis.all(-1) if vis.ndim == 3 else vis  # [C, N, 2] per-axis radii or [C, N]
        masks.append(vis.any(0))
    if not masks:
        raise ValueError("selective_adam: no views rendered this step, so no visibility")
    return torch.stack(masks).any(0)


def state_bytes(optimizers: dict[str, torch.optim.Optimizer]) -> int:
    """Bytes of every tensor the optimizers keep (moments and step counts)."""
    from genai_train.optim.memory import optimizer_state_bytes

    return sum(optimizer_state_bytes(o) for o in optimizers.values())
