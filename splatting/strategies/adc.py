"""Adaptive density control (ADC), the densification of 3D Gaussian Splatting.

3D Gaussian Splatting for Real-Time Radiance Field Rendering, https://arxiv.org/abs/2308.04079 (Sec. 5.2),
with gsplat's ``DefaultStrategy`` defaults. Every ``refine_every`` steps in [refine_start, refine_stop):
Gaussians whose mean screen-space gradient norm exceeds ``grow_grad2d`` are cloned (small) or split
(large); those with opacity < ``prune_opa`` (and, after the first reset, too large ones) are removed.
Every ``reset_every`` steps opacities are clamped to 2 * prune_opa. Unlike gsplat 1.5.3, whose reset test
``step % reset_every == 0 & step > 0`` is a chained comparison that is never true, the reset here happens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from splatting.strategies import ops

__all__ = ["DensifyStrategy", "ADCStrategy"]


@dataclass
class DensifyStrategy:
    """What ADC and SteepGS share: statistics, schedule, pruning, opacity reset. ``_grow`` is each one's own."""

    prune_opa: float = field(default=0.005, metadata={"help": "prune Gaussians with opacity below this"})
    grow_grad2d: float = field(
        default=0.0002, metadata={"help": "grow Gaussians whose mean 2-D gradient norm exceeds this"}
    )
    prune_scale3d: float = field(
        default=0.1, metadata={"help": "after the first reset, prune max scale > this x scene scale"}
    )
    refine_start: int = field(default=500, metadata={"help": "first step of densification"})
    refine_stop: int = field(default=15_000, metadata={"help": "no densification from this step on"})
    refine_every: int = field(default=100, metadata={"help": "densify every N steps"})
    reset_every: int = field(
        default=3000, metadata={"help": "clamp opacities to 2 x prune_opa every N steps (0: never)"}
    )
    pause_refine_after_reset: int = field(default=0, metadata={"help": "skip densification for N steps after a reset"})
    max_gaussians: int = field(default=0, metadata={"help": "stop growing beyond this many Gaussians (0: no cap)"})

    accumulates: ClassVar[bool] = True  # per-view statistics, summed over the step's views and ranks

    def __post_init__(self):
        if self.refine_every < 1:
            raise ValueError(f"strategy.refine_every must be >= 1, got {self.refine_every}")
        if self.reset_every < 0:
            raise ValueError(f"strategy.reset_every must be >= 0 (0 disables resets), got {self.reset_every}")
        if not 0 < self.prune_opa < 0.5:
            raise ValueError(f"strategy.prune_opa must be in (0, 0.5), got {self.prune_opa}")

    def initialize_state(self, scene_scale: float = 1.0, seed: int = 0) -> dict:
        """Per-Gaussian accumulators are created lazily at the first backward (N is known then); no draws."""
        return {"grad2d": None, "count": None, "scene_scale": float(scene_scale)}

    def check_sanity(self, params: torch.nn.ParameterDict, optimizers: dict) -> None:
        missing = {"means", "scales", "quats", "opacities"} - set(params.keys())
        if missing:
            raise ValueError(f"ADC needs parameters {sorted(missing)}")
        if set(params.keys()) != set(optimizers.keys()):
            raise ValueError(
                f"one optimizer per parameter is required: params {sorted(params.keys())}, "
                f"optimizers {sorted(optimizers.keys())}"
            )

    def step_pre_backward(self, params, optimizers, state: dict, step: int, info: dict) -> None:
        info["means2d"].retain_grad()

    def is_reset_step(self, step: int) -> bool:
        return self.reset_every > 0 and step > 0 and step % self.reset_every == 0

    def is_refine_step(self, step: int) -> bool:
        return (
            self.refine_start < step < self.refine_stop
            and step % self.refine_every == 0
            and (self.reset_every == 0 or step % self.reset_every >= self.pause_refine_after_reset)
        )

    def step_post_backward(self, params, optimizers, state: dict, step: int, info: dict) -> dict:
        """Accumulate this view's statistics, then grow/prune and reset on schedule. Returns what happened."""
        if step >= self.refine_stop:
            # resets continue only while densification runs (as in 3DGS)
            return {}
        self._accumulate(params, state, info)
        return self.refine(params, optimizers, state, step)

    def accumulate(self, params, state: dict, info: dict) -> None:
        """Add one render's statistics (``info`` after backward) to the per-Gaussian sums in ``state``."""
        if info is not None:
            self._accumulate(params, state, info)

    def regularization(self, params) -> float:
        """No loss term of its own (the trainer's opacity_reg / scale_reg still apply)."""
        return 0.0

    def refine(self, params, optimizers, state: dict, step: int, lr: float | None = None) -> dict:
        """Grow/prune and reset on schedule from the accumulated statistics (once per optimizer step)."""
        events: dict = {}
        if step >= self.refine_stop:
            return events
        if self.is_refine_step(step):
            n_dup, n_split = self._grow(params, optimizers, state, step)
            n_prune = self._prune(params, optimizers, state, step)
            events.update(duplicated=n_dup, split=n_split, pruned=n_prune, n=len(params["means"]))
            state["grad2d"].zero_()
            state["count"].zero_()
        if self.is_reset_step(step):
            ops.reset_opacity(params, optimizers, value=self.prune_opa * 2.0)
            events["opacity_reset"] = True
        return events

    @torch.no_grad()
    def _accumulate(self, params, state: dict, info: dict) -> None:
        n = len(params["means"])
        if state["grad2d"] is None or state["grad2d"].shape[0] != n:
            state["grad2d"] = torch.zeros(n, device=params["means"].device)
            state["count"] = torch.zeros(n, device=params["means"].device)
        grad = info["means2d"].grad
        if grad is None:
            raise RuntimeError("means2d has no gradient: call step_pre_backward before loss.backward()")
        grad = grad.clone()  # [C, N, 2], pixels -> NDC-like units as in gsplat
        grad[..., 0] *= info["width"] / 2.0 * info["n_cameras"]
        grad[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        visible = (info["radii"] > 0).all(-1)  # [C, N]
        cam, gid = torch.where(visible)
        state["grad2d"].index_add_(0, gid, grad[cam, gid].norm(dim=-1))
        state["count"].index_add_(0, gid, torch.ones_like(gid, dtype=state["count"].dtype))

    def _grow(self, params, optimizers, state: dict, step: int) -> tuple[int, int]:
        raise NotImplementedError

    @torch.no_grad()
    def _prune(self, params, optimizers, state: dict, step: int) -> int:
        prune = torch.sigmoid(params["opacities"]) < self.prune_opa
        if self.reset_every > 0 and step > self.reset_every:
            prune |= torch.exp(params["scales"]).max(-1).values > self.prune_scale3d * state["scene_scale"]
        n = int(prune.sum())
        if n:
            ops.remove(params, optimizers, state, prune)
        return n


@dataclass
class ADCStrategy(DensifyStrategy):
    """ADC: clone small Gaussians with a large mean 2-D gradient, split large ones (3DGS Sec. 5.2)."""

    grow_scale3d: float = field(default=0.01, metadata={"help": "clone if max scale <= this x scene scale, else split"})
    revised_opacity: bool = field(default=False, metadata={"help": "children of a split get 1 - sqrt(1 - o)"})

    @torch.no_grad()
    def _grow(self, params, optimizers, state: dict, step: int) -> tuple[int, int]:
        grads = state["grad2d"] / state["count"].clamp_min(1)
        high = grads > self.grow_grad2d
        small = torch.exp(params["scales"]).max(-1).values <= self.grow_scale3d * state["scene_scale"]
        dup = high & small
        if self.max_gaussians > 0:
            room = max(0, self.max_gaussians - len(high))
            dup = _cap(dup, grads, room)
            room -= int(dup.sum())
        n_dup = int(dup.sum())
        if n_dup:
            ops.duplicate(params, optimizers, state, dup)
        splt = torch.cat([high & ~small, torch.zeros(n_dup, dtype=torch.bool, device=high.device)])
        if self.max_gaussians > 0:
            splt = _cap(splt, torch.cat([grads, torch.zeros(n_dup, device=grads.device)]), room)
        n_split = int(splt.sum())
        if n_split:
            sel = torch.where(splt)[0]
            offsets = ops.sample_offsets(params, sel)  # [2, S, 3]
            child_opac = None
            if self.revised_opacity:  # 1 - sqrt(1 - o) (Rota Bulo et al. 2024)
                child_opac = torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(params["opacities"][sel])))
            ops.split(params, optimizers, state, splt, offsets, child_opac)
        return n_dup, n_split


def _cap(mask: torch.Tensor, score: torch.Tensor, room: int) -> torch.Tensor:
    """Keep only the ``room`` highest-scoring entries of ``mask``."""
    if int(mask.sum()) <= room:
        return mask
    out = torch.zeros_like(mask)
    if room > 0:
        idx = torch.where(mask)[0]
        out[idx[torch.topk(score[idx], room).indices]] = True
    return out
