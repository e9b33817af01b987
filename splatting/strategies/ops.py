"""Operations that change the number of Gaussians while keeping optimizer state and strategy state aligned.

Every op rewrites, for each parameter key, the Parameter, every per-Gaussian tensor of its optimizer's state
(the moments of Adam and selective Adam, Adam-mini's [N, 1, ...] second moment; new rows start at zero) and
every per-Gaussian tensor in the strategy ``state``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from splatting.gaussians import quat_to_rotmat

__all__ = ["update_params", "duplicate", "sample_offsets", "split", "remove", "reset_opacity"]


def update_params(
    params: torch.nn.ParameterDict,
    optimizers: dict[str, torch.optim.Optimizer],
    param_fn: Callable[[str, Tensor], Tensor],
    opt_fn: Callable[[str, Tensor], Tensor],
    names: list[str] | None = None,
) -> None:
    """Replace ``params[k]`` by ``param_fn(k, old)`` and each optimizer moment ``v`` by ``opt_fn(k, v)``."""
    for name in names if names is not None else list(params.keys()):
        old = params[name]
        new = torch.nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        opt = optimizers.get(name)
        if opt is not None:
            group = opt.param_groups[0]
            st = opt.state.pop(old, None)
            if st:
                for key, v in list(st.items()):  # per-Gaussian rows: [N, ...] moments, Adam-mini's [N, 1, ...]
                    if key != "step" and isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == old.shape[0]:
                        st[key] = opt_fn(key, v)
                opt.state[new] = st
            group["params"] = [new]
        params[name] = new


def _update_state(state: dict, fn: Callable[[Tensor], Tensor], n_old: int) -> None:
    for k, v in state.items():
        if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n_old:
            state[k] = fn(v)


@torch.no_grad()
def duplicate(params, optimizers, state: dict, mask: Tensor) -> None:
    """Clone the Gaussians in ``mask`` [N] (ADC "clone" for small, under-reconstructed ones)."""
    sel = torch.where(mask)[0]
    n = mask.shape[0]
    update_params(
        params, optimizers, lambda _, p: torch.cat([p, p[sel]]), lambda _, v: torch.cat([v, torch.zeros_like(v[sel])])
    )
    _update_state(state, lambda v: torch.cat([v, v[sel]]), n)


def sample_offsets(params, sel: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """ADC's child offsets: two draws from each selected Gaussian, R diag(s) eps, eps ~ N(0, I). -> [2, S, 3]"""
    scales = torch.exp(params["scales"][sel])  # [S, 3]
    rot = quat_to_rotmat(params["quats"][sel])  # [S, 3, 3]
    noise = torch.randn(2, len(sel), 3, generator=generator, device=scales.device, dtype=scales.dtype)
    return torch.einsum("nij,nj,bnj->bni", rot, scales, noise)  # [2, S, 3]


@torch.no_grad()
def split(
    params,
    optimizers,
    state: dict,
    mask: Tensor,
    offsets: Tensor,
    child_opacities: Tensor | None = None,
) -> None:
    """Replace each Gaussian in ``mask`` [N] by two children at mean + ``offsets`` [2, S, 3], scales / 1.6.

    ``child_opacities`` [S] (logits) is the opacity each child of a parent gets (None: the parent's); the other
    attributes are copied. Survivors keep their order and come first, then the first children, then the
    second ones. Children's optimizer rows start at zero; their strategy-state rows are copied from the parent.
    """
    sel, rest = torch.where(mask)[0], torch.where(~mask)[0]
    n = mask.shape[0]
    scales = torch.exp(params["scales"][sel])  # [S, 3]

    def param_fn(name: str, p: Tensor) -> Tensor:
        if name == "means":
            child = (p[sel][None] + offsets).reshape(-1, 3)
        elif name == "scales":
            child = torch.log(scales / 1.6).repeat(2, 1)
        elif name == "opacities" and child_opacities is not None:
            child = child_opacities.repeat(2)
        else:
            child = p[sel].repeat(2, *([1] * (p.ndim - 1)))
        return torch.cat([p[rest], child])

    update_params(
        params,
        optimizers,
        param_fn,
        lambda _, v: torch.cat([v[rest], torch.zeros((2 * len(sel),) + v.shape[1:], dtype=v.dtype, device=v.device)]),
    )
    _update_state(state, lambda v: torch.cat([v[rest], v[sel].repeat(2, *([1] * (v.ndim - 1)))]), n)


@torch.no_grad()
def remove(params, optimizers, state: dict, mask: Tensor) -> None:
    """Delete the Gaussians in ``mask`` [N]."""
    keep = torch.where(~mask)[0]
    n = mask.shape[0]
    update_params(params, optimizers, lambda _, p: p[keep], lambda _, v: v[keep])
    _update_state(state, lambda v: v[keep], n)


@torch.no_grad()
def reset_opacity(params, optimizers, value: float) -> None:
    """Clamp every opacity to at most ``value`` and zero its Adam moments (paper Sec. 5.2)."""
    cap = torch.logit(torch.tensor(value)).item()
    update_params(
        params, optimizers, lambda _, p: torch.clamp_max(p, cap), lambda _, v: torch.zeros_like(v), names=["opacities"]
    )
