"""SteepGS: steepest-descent density control for 3D Gaussian Splatting.

Wang et al., "Steepest Descent Density Control for Compact 3D Gaussian Splatting" (CVPR 2025),
https://arxiv.org/abs/2505.05587. A Gaussian whose splitting matrix S (the expected loss gradient times the
Hessian of its contribution with respect to its position) has a negative eigenvalue sits at a saddle point:
splitting it into two children at +-v_min (the eigenvector of the smallest eigenvalue), each with half the
opacity, lowers the loss where moving the parent cannot. Everything else densifies nothing.

This module holds the math as small pure functions. The exact 2x2 screen-space matrix follows from ordinary
gradients of the loss with respect to each Gaussian's per-view conic and opacity (no custom kernel):

    S2D = C M C - a C,   M = -2 dL/dC (symmetric 2x2),   a = o dL/do            (ALGORITHMS.md section 2)

and it is lifted to 3-D with the projection Jacobian J (2x3): S3D += J^T S2D J.

Selection: mean 2-D gradient over ADC's threshold and lambda_min(S) below ``split_threshold`` (the paper's
sign test), and the split's second-order prediction, 1/2 E|offset|^2 |lambda_min| (loss units, so independent
of the scene's scale), at least ``min_decrease_pixels`` times one average pixel's share of the current loss
(view loss / pixels per view): a new Gaussian must promise to remove one pixel's error. ``min_decrease`` is an
optional absolute bar on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from genai_train.kernels import use_triton
from splatting.gaussians import inverse_covariance_3d
from splatting.strategies import ops
from splatting.strategies.adc import DensifyStrategy, _cap
from splatting.strategies.steepgs_kernel import accumulate_splitting_matrices_triton

__all__ = [
    "SteepGSStrategy",
    "steepest_offsets",
    "half_opacity",
    "conic_matrix",
    "conic_grad_matrix",
    "splitting_matrix_2d",
    "projection_jacobian",
    "lift_splitting_matrix",
    "inv_cov_splitting_matrix",
    "smallest_eigen",
    "predicted_decrease",
    "pixel_loss",
]


def conic_matrix(conics: Tensor) -> Tensor:
    """Packed conics (a, b, c), quadratic form a dx^2 + 2 b dx dy + c dy^2 -> symmetric [..., 2, 2]."""
    a, b, c = conics.unbind(-1)
    return torch.stack([torch.stack([a, b], -1), torch.stack([b, c], -1)], -2)


def conic_grad_matrix(grad_conics: Tensor) -> Tensor:
    """dL/d(a, b, c) -> dL/dC as a symmetric 2x2: b appears in C twice, so dL/dC_01 = dL/db / 2."""
    ga, gb, gc = grad_conics.unbind(-1)
    return conic_matrix(torch.stack([ga, gb / 2, gc], -1))


def splitting_matrix_2d(conics: Tensor, grad_conics: Tensor, opacities: Tensor, grad_opacities: Tensor) -> Tensor:
    """Exact screen-space splitting matrix of each Gaussian in one view.

    With alpha_i(x) = o_i G_i(x), G_i = exp(-d^T C d / 2), d = x - m_i, the Hessian in m_i is
    alpha_i (C d d^T C - C), so sum_x dL/dalpha alpha_i (C d d^T C - C) = C M C - a C with
    M = sum_x dL/dalpha alpha_i d d^T = -2 dL/dC and a = sum_x dL/dalpha alpha_i = o_i dL/do_i.

    conics, grad_conics: [..., 3]; opacities, grad_opacities: [...] -> [..., 2, 2]
    """
    C = conic_matrix(conics)  # [..., 2, 2]
    M = -2.0 * conic_grad_matrix(grad_conics)  # [..., 2, 2]
    a = (opacities * grad_opacities)[..., None, None]
    return C @ M @ C - a * C


def projection_jacobian(means_cam: Tensor, fx: Tensor | float, fy: Tensor | float, R: Tensor) -> Tensor:
    """d(pixel)/d(world position) of a pinhole camera, [..., N, 2, 3].

    means_cam: [..., N, 3] camera-space points t = R p + T; fx, fy broadcast against [..., N];
    R: [..., 1, 3, 3] (or [3, 3]) world-to-camera rotation.
    du/dt = [[fx/tz, 0, -fx tx/tz^2], [0, fy/tz, -fy ty/tz^2]], du/dp = du/dt R.
    """
    tx, ty, tz = means_cam.unbind(-1)
    z = torch.zeros_like(tz)
    J = torch.stack(
        [
            torch.stack([fx / tz, z, -fx * tx / tz**2], -1),
            torch.stack([z, fy / tz, -fy * ty / tz**2], -1),
        ],
        -2,
    )  # [N, 2, 3]
    return J @ R


def lift_splitting_matrix(S2d: Tensor, J: Tensor) -> Tensor:
    """J^T S2D J: [N, 2, 2], [N, 2, 3] -> [N, 3, 3] (drops the projection's curvature, as the paper does)."""
    return J.transpose(-1, -2) @ S2d @ J


def inv_cov_splitting_matrix(grad_opacities: Tensor, opacities: Tensor, inv_cov3d: Tensor) -> Tensor:
    """The official code's cheap estimator: S ~ (o dL/do) Sigma^{-1} (3-D inverse covariance).

    Its smallest eigenvalue is negative iff o dL/do < 0, and then v_min is the Gaussian's shortest axis.
    grad_opacities, opacities: [..., N]; inv_cov3d: [N, 3, 3] (``inverse_covariance_3d``) -> [..., N, 3, 3]
    """
    return (opacities * grad_opacities)[..., None, None] * inv_cov3d


def smallest_eigen(S: Tensor) -> tuple[Tensor, Tensor]:
    """Smallest eigenvalue [N] and its unit eigenvector [N, 3] of symmetric matrices [N, 3, 3]."""
    S = 0.5 * (S + S.transpose(-1, -2))
    vals, vecs = torch.linalg.eigh(S)  # ascending
    return vals[:, 0], vecs[:, :, 0]


def predicted_decrease(log_scales: Tensor, lam: Tensor) -> Tensor:
    """Second-order loss change of a split, 1/2 E|eps|^2 lambda_min, for the offsets steepest_offsets draws.

    The children sit at +-v_min |eps| with eps ~ N(0, diag(s)), so E|eps|^2 = tr(Sigma) = sum(s^2), and the
    paper's expansion gives Delta L = 1/2 |eps|^2 lambda_min (negative at a saddle). [N, 3], [N] -> [N]
    """
    return 0.5 * torch.exp(2.0 * log_scales).sum(-1) * lam


def steepest_offsets(log_scales: Tensor, directions: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Children at p +- v ||eps||, eps ~ N(0, diag(s)): offsets [2, S, 3] of S parents.

    log_scales [S, 3], directions [S, 3] unit vectors (v_min); the step length is drawn independently per
    child, as in the official code.
    """
    scales = torch.exp(log_scales)  # [S, 3]
    eps = torch.randn(2, len(scales), 3, generator=generator, device=scales.device, dtype=scales.dtype) * scales
    sign = torch.tensor([1.0, -1.0], device=scales.device, dtype=scales.dtype)[:, None, None]
    return sign * directions[None] * eps.norm(dim=-1, keepdim=True)  # [2, S, 3]


def pixel_loss(state: dict) -> Tensor:
    """One average pixel's share of a view's loss since the last refinement: mean over views of L_v / P_v.

    L_v is the view's training loss (a mean over its P_v pixels), so L_v / P_v is what removing the error of one
    average pixel would gain: the default bar a split's predicted decrease must clear (``min_decrease_pixels``).
    """
    sums = state.get("loss_px")
    if sums is None or not float(sums[1]) > 0:
        raise ValueError("no view's loss was accumulated since the last refinement: cannot form the pixel-loss bar")
    return sums[0] / sums[1]


def half_opacity(logit_opacities: Tensor) -> Tensor:
    """The paper's child opacity o / 2, as a logit. [S] -> [S]"""
    return torch.logit(0.5 * torch.sigmoid(logit_opacities))


@dataclass
class SteepGSStrategy(DensifyStrategy):
    """SteepGS densification: split only Gaussians at saddle points, once, along v_min, at half opacity.

    Pruning, opacity reset and the schedule are ADC's (inherited), so a comparison isolates densification.
    Needs ``info`` from the renderer with conics [C, N, 3], opacities [C, N], depths, viewmats [C, 4, 4] and
    Ks [C, 3, 3]; both renderers provide them.
    """

    estimator: Literal["exact", "inv_cov"] = field(
        default="exact", metadata={"help": "exact: S from conic/opacity gradients; inv_cov: the official code's"}
    )
    split_threshold: float = field(
        default=-1e-6, metadata={"help": "split candidates need lambda_min(S) below this (negative)"}
    )
    min_decrease: float = field(
        default=0.0,
        metadata={
            "help": "also require the split's predicted loss decrease, 1/2 E|offset|^2 "
            "|lambda_min| = 1/2 tr(Sigma) |lambda_min| (loss units per view), to exceed "
            "this; 0 keeps the paper's sign test only"
        },
    )
    min_decrease_pixels: float = field(
        default=1.0,
        metadata={
            "help": "also require the predicted decrease to exceed this many pixels' share of the current loss "
            "(mean training loss of the views since the last refinement / pixels per view): a new Gaussian must "
            "remove at least one average pixel's error; 0 turns this test off"
        },
    )
    halve_opacity: bool = field(default=True, metadata={"help": "children get half the parent's opacity (paper)"})
    kernels: Literal["auto", "triton", "torch"] = field(
        default="auto",
        metadata={
            "help": "exact estimator's accumulation: auto = one fused Triton kernel on CUDA, torch = its pure-torch "
            "twin, triton = always (CPU only under TRITON_INTERPRET=1)"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.estimator not in ("exact", "inv_cov"):
            raise ValueError(f"strategy.estimator={self.estimator!r}; choose exact or inv_cov")
        if not self.split_threshold < 0:
            raise ValueError(f"strategy.split_threshold must be negative, got {self.split_threshold}")
        if not self.min_decrease >= 0:
            raise ValueError(f"strategy.min_decrease must be >= 0 (a loss decrease), got {self.min_decrease}")
        if not self.min_decrease_pixels >= 0:
            raise ValueError(f"strategy.min_decrease_pixels must be >= 0 (pixels), got {self.min_decrease_pixels}")

    def initialize_state(self, scene_scale: float = 1.0, seed: int = 0) -> dict:
        return {**super().initialize_state(scene_scale, seed), "S": None, "loss_px": None}

    def step_pre_backward(self, params, optimizers, state: dict, step: int, info: dict) -> None:
        super().step_pre_backward(params, optimizers, state, step, info)
        info["opacities"].retain_grad()
        if self.estimator == "exact":
            info["conics"].retain_grad()

    def view_splitting_matrices(self, params, info: dict) -> Tensor:
        """Per-view 3x3 splitting matrices of every Gaussian, [C, N, 3, 3]."""
        opac, g_opac = info["opacities"].detach(), info["opacities"].grad  # [C, N]
        if g_opac is None:
            raise RuntimeError("opacities have no gradient: call step_pre_backward before loss.backward()")
        if self.estimator == "inv_cov":
            inv_cov = inverse_covariance_3d(params["quats"].detach(), params["scales"].detach())  # [N, 3, 3]
            return inv_cov_splitting_matrix(g_opac, opac, inv_cov)  # [C, N, 3, 3]
        S2d = splitting_matrix_2d(info["conics"].detach(), info["conics"].grad, opac, g_opac)  # [C, N, 2, 2]
        viewmats, Ks = info["viewmats"], info["Ks"]
        R, T = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]  # [C, 1, 3, 3], [C, 1, 3]
        means_c = (R @ params["means"].detach()[None, :, :, None])[..., 0] + T  # [C, N, 3]
        J = projection_jacobian(means_c, Ks[:, 0, 0, None], Ks[:, 1, 1, None], R)  # [C, N, 2, 3]
        return lift_splitting_matrix(S2d, J)

    @torch.no_grad()
    def _accumulate(self, params, state: dict, info: dict) -> None:
        super()._accumulate(params, state, info)
        n = len(params["means"])
        if state["S"] is None or state["S"].shape[0] != n:
            state["S"] = torch.zeros(n, 3, 3, device=params["means"].device)
        self._accumulate_matrices(params, state, info)
        if self.min_decrease_pixels > 0:
            if "loss" not in info:
                raise ValueError(
                    "strategy.min_decrease_pixels needs each view's loss in info['loss'] (the splat trainer sets "
                    "it); set it yourself after computing the loss, or pass min_decrease_pixels=0"
                )
            if state.get("loss_px") is None:
                state["loss_px"] = torch.zeros(2, device=params["means"].device)
            per_pixel = info["loss"].detach().float().to(state["loss_px"].device) / (info["width"] * info["height"])
            state["loss_px"] += torch.stack([per_pixel, torch.ones_like(per_pixel)])  # (sum of L/P, renders)

    def _accumulate_matrices(self, params, state: dict, info: dict) -> None:
        """state["S"] += each view's splitting matrix of every Gaussian it sees: one fused Triton kernel
        (``steepgs_kernel``) on CUDA for the exact estimator, else the torch twin below."""
        if self.estimator == "exact" and use_triton(self.kernels, state["S"]):
            opac = info["opacities"]
            if opac.grad is None:
                raise RuntimeError("opacities have no gradient: call step_pre_backward before loss.backward()")
            accumulate_splitting_matrices_triton(
                state["S"], info["conics"], info["conics"].grad, opac, opac.grad, info["radii"],
                params["means"], info["viewmats"], info["Ks"],
            )  # fmt: skip
            return
        S = self.view_splitting_matrices(params, info)  # [C, N, 3, 3]
        cam, gid = torch.where((info["radii"] > 0).all(-1))
        state["S"].index_add_(0, gid, S[cam, gid].to(state["S"].dtype))

    def candidates(self, params, state: dict) -> tuple[Tensor, Tensor, Tensor]:
        """(mask [N], lambda_min [N], v_min [N, 3]) of the Gaussians to split now."""
        count = state["count"].clamp_min(1)
        grads = state["grad2d"] / count
        lam, vec = smallest_eigen(state["S"] / count[:, None, None])
        mask = (grads >= self.grow_grad2d) & (lam < self.split_threshold)
        if self.min_decrease > 0:
            mask &= predicted_decrease(params["scales"], lam) < -self.min_decrease
        if self.min_decrease_pixels > 0:
            mask &= predicted_decrease(params["scales"], lam) < -self.min_decrease_pixels * pixel_loss(state)
        return mask, lam, vec

    @torch.no_grad()
    def _grow(self, params, optimizers, state: dict, step: int) -> tuple[int, int]:
        mask, lam, vec = self.candidates(params, state)
        if self.max_gaussians > 0:
            mask = _cap(mask, -lam, max(0, self.max_gaussians - len(mask)))
        n_split = int(mask.sum())
        if n_split:
            sel = torch.where(mask)[0]
            offsets = steepest_offsets(params["scales"][sel], vec[sel])  # [2, S, 3]
            child_opac = half_opacity(params["opacities"][sel]) if self.halve_opacity else None
            ops.split(params, optimizers, state, mask, offsets, child_opac)
        state["S"].zero_()
        if state.get("loss_px") is not None:
            state["loss_px"].zero_()
        return 0, n_split
