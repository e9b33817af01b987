"""Patch-size schedule, random crops and coordinate channels.

Patch Diffusion: Faster and More Data-Efficient Training of Diffusion Models (Wang et al., NeurIPS 2023),
https://arxiv.org/abs/2304.12526. Each step trains on one patch size P for the whole batch: the full
resolution R with probability p, otherwise R/2 or R/4 (probabilities (1-p)*3/5 and (1-p)*2/5). Every
sample gets its own random crop; two extra channels carry the pixel's (x, y) position in the FULL image,
scaled to [-1, 1], so the network knows where a patch lies. p = 1 is plain EDM through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor


@dataclass
class PatchConfig:
    """How patches are drawn."""

    p: float = field(default=0.5, metadata={"help": "probability of a full-size step; 1.0 = plain EDM"})
    schedule: Literal["stochastic", "progressive"] = field(
        default="stochastic",
        metadata={"help": "stochastic: draw a size each step; progressive: R/4, then R/2, then R over the run"},
    )
    batch_mul: Literal["linear", "area", "none"] = field(
        default="linear",
        metadata={"help": "batch multiplier for patch P: linear R/P (official), area (R/P)^2, or none"},
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"patch.p must be in [0, 1] (1.0 = full images only), got {self.p}")


def patch_choices(resolution: int, p: float) -> list[tuple[int, float]]:
    """[(patch size, probability)], smallest first: [(R/4, (1-p)2/5), (R/2, (1-p)3/5), (R, p)]."""
    if p >= 1.0:
        return [(resolution, 1.0)]
    if resolution % 4:
        raise ValueError(
            f"resolution {resolution} is not divisible by 4, so patches R/2 and R/4 are not whole pixels; "
            "pick a resolution divisible by 4 or set patch.p=1.0 (full images only)"
        )
    choices = [(resolution // 4, (1 - p) * 2 / 5), (resolution // 2, (1 - p) * 3 / 5), (resolution, p)]
    return [(s, q) for s, q in choices if q > 0]  # p = 0: R is never drawn, so it is not listed


def batch_multiplier(resolution: int, patch: int, rule: str = "linear") -> int:
    """How many times the base batch a step of patch size `patch` uses (defined for any R/P)."""
    if rule == "linear":
        return resolution // patch
    if rule == "area":
        return (resolution // patch) ** 2
    if rule == "none":
        return 1
    raise ValueError(f"patch.batch_mul must be one of linear, area, none; got {rule!r}")


def mean_batch_multiplier(resolution: int, cfg: PatchConfig) -> float:
    """Expected multiplier sum_i p_i mul_i (1.9 for linear, p=0.5): images per step / base batch."""
    return sum(q * batch_multiplier(resolution, s, cfg.batch_mul) for s, q in patch_choices(resolution, cfg.p))


def draw_patch_size(resolution: int, cfg: PatchConfig, generator: torch.Generator, progress: float) -> int:
    """One patch size for this step. progress = step / total steps, used by the progressive schedule.

    The stochastic draw always consumes one random number (also for p = 1) so that the random stream,
    and hence everything else in a run, does not depend on p.
    """
    choices = patch_choices(resolution, cfg.p)
    u = float(torch.rand((), generator=generator))
    if cfg.schedule == "progressive":
        u = progress  # the probabilities read as cumulative fractions of the run
    acc = 0.0
    for size, q in choices:
        acc += q
        if u < acc:
            return size
    return choices[-1][0]


def coord_grid(
    height: int,
    width: int,
    resolution: int,
    x_start: int = 0,
    y_start: int = 0,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Coordinate channels [2, H, W]: channel 0 is x (column), channel 1 is y (row), (idx/(R-1) - 0.5) * 2.

    With the defaults and H = W = R this spans exactly [-1, 1]; a larger canvas or a start offset
    extends the coordinates past [-1, 1] (extrapolation / out-painting).
    """
    scale = 2.0 / max(resolution - 1, 1)
    xs = (torch.arange(width, device=device, dtype=torch.float32) + x_start) * scale - 1.0
    ys = (torch.arange(height, device=device, dtype=torch.float32) + y_start) * scale - 1.0
    return torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)])


def random_crops(
    images: Tensor, patch: int, generator: torch.Generator, take: Tensor | None = None, n_drawn: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Crop every image at its own random integer offset, together with its coordinate channels.

    images: [B, C, R, R]. Returns patches [B, C, P, P], pos [B, 2, P, P] and offsets [B, 2] (row, col).
    Image and coordinates are cut from one stacked tensor, so they cannot fall out of alignment.
    With ``take`` the offsets of ``n_drawn`` crops are drawn and the rows ``take`` [B] kept (the images of
    this rank within a DDP step's global batch, so the crops do not depend on how it is split over ranks).
    """
    b, c, h, w = images.shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    n = n_drawn if take is not None else b
    offsets = torch.randint(0, h - patch + 1, (n, 2), generator=generator)  # [n, 2] (row, col)
    if take is not None:
        offsets = offsets[take]  # [B, 2]
    if patch == h:
        offsets.zero_()
    grid = coord_grid(h, w, h, device=images.device).to(images.dtype)
    full = torch.cat([images, grid.expand(b, 2, h, w)], dim=1)  # [B, C+2, R, R]
    offsets_dev = offsets.to(images.device)
    ar = torch.arange(patch, device=images.device)
    rows = offsets_dev[:, 0:1] + ar  # [B, P]
    cols = offsets_dev[:, 1:2] + ar  # [B, P]
    bidx = torch.arange(b, device=images.device)[:, None, None]
    out = full[bidx, :, rows[:, :, None], cols[:, None, :]]  # [B, P, P, C+2]
    out = out.permute(0, 3, 1, 2).contiguous()  # [B, C+2, P, P]
    return out[:, :c], out[:, c:], offsets
