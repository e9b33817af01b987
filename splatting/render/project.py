"""Projection and tile binning of the pure-PyTorch rasterizer (steps 1-2 of :mod:`splatting.render.torch_raster`).

3D Gaussian Splatting for Real-Time Radiance Field Rendering, https://arxiv.org/abs/2308.04079, with the
"classic" math of gsplat (https://arxiv.org/abs/2409.06765):

1. EWA projection: Sigma_2D = J W Sigma W^T J^T + eps2d I, J the perspective Jacobian at the (frustum-
   clamped) camera-space mean; conic = Sigma_2D^-1 stored as (a, b, c) = (inv00, inv01, inv11).
   ``mode="antialiased"`` (gsplat's 2-D filter, Mip-Splatting's): the same dilated Sigma_2D, and the opacity
   multiplied by sqrt(det(Sigma_2D - eps2d I) / det(Sigma_2D)) so the dilation does not add energy (a
   Gaussian smaller than a pixel fades instead of growing).
2. Extent: radius per axis = ceil(k * sqrt(Sigma_2D[ii])) with k = 3.33 (gsplat 1.5); a Gaussian touches the
   tiles its box overlaps; off-screen, behind-near-plane or degenerate Gaussians get radius 0. The tile
   intersections are generated with ``repeat_interleave``, and pairs whose opacity-scaled ellipse misses
   every pixel centre of the tile are culled exactly (``tile_touches``) before one sort by (tile, depth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "RasterSettings",
    "DEFAULT_SETTINGS",
    "project_ewa",
    "tile_bounds",
    "binning_radii",
    "isect_tiles",
    "tile_touches",
]


@dataclass(frozen=True)
class RasterSettings:
    """Numerical constants of the classic rasterizer (gsplat 1.5 defaults)."""

    eps2d: float = 0.3
    mode: Literal["classic", "antialiased"] = "classic"  # antialiased: opacity x the 2-D filter's compensation
    near_plane: float = 0.01
    far_plane: float = 1e10
    radius_sigmas: float = 3.33
    alpha_min: float = 1.0 / 255.0
    alpha_max: float = 0.999
    transmittance_min: float = 1e-4
    tile_size: int = 16
    chunk_elems: int = 1 << 22  # fragments (tile x Gaussian slot x pixel) held at once
    store_elems: int = 1 << 26  # floats of forward fragments kept for the backward per call (0: recompute all)
    k_block: int = 32  # depth slots composited per step; saturated tiles leave their chunk between steps
    pad_ratio: float = 0.75  # tiles share a chunk only if they hold >= this fraction of its fullest tile's count


DEFAULT_SETTINGS = RasterSettings()


def project_ewa(
    means: Tensor,
    covars: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    settings: RasterSettings = DEFAULT_SETTINGS,
    compensation: bool = False,
) -> tuple[Tensor, ...]:
    """EWA splatting of 3-D Gaussians into C pinhole views (Zwicker et al. 2002; paper Eq. 5).

    means [N, 3], covars [N, 3, 3], viewmats [C, 4, 4] world->camera, Ks [C, 3, 3].
    Returns means2d [C, N, 2] (pixels), conics [C, N, 3], depths [C, N], radii [C, N, 2] (int32, 0 = culled),
    and with ``compensation`` also sqrt(det(Sigma_2D) / det(Sigma_2D + eps2d I)) [C, N] (the antialiasing
    filter's opacity factor).
    """
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", rot, means) + trans[:, None, :]  # [C, N, 3]
    covars_c = torch.einsum("cij,njk,clk->cnil", rot, covars, rot)  # [C, N, 3, 3]
    tx, ty, tz = means_c.unbind(-1)  # [C, N]
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Clamp the point used for the Jacobian to 1.3x the field of view (gsplat / INRIA).
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    ux = tz * torch.clamp(tx / tz, min=-(cx / fx + 0.3 * tan_x), max=(width - cx) / fx + 0.3 * tan_x)
    uy = tz * torch.clamp(ty / tz, min=-(cy / fy + 0.3 * tan_y), max=(height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(tz)
    jac = torch.stack([fx / tz, zero, -fx * ux / tz**2, zero, fy / tz, -fy * uy / tz**2], dim=-1)
    jac = jac.reshape(tz.shape + (2, 3))  # [C, N, 2, 3]
    cov2d = jac @ covars_c @ jac.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)  # [C, N, 2]

    a = cov2d[..., 0, 0] + settings.eps2d
    c = cov2d[..., 1, 1] + settings.eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det = (a * c - b * b).clamp(min=1e-10)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)  # [C, N, 3]

    with torch.no_grad():
        radii = torch.stack(
            [torch.ceil(settings.radius_sigmas * a.sqrt()), torch.ceil(settings.radius_sigmas * c.sqrt())], dim=-1
        )  # [C, N, 2]
        valid = (a * c - b * b > 0) & (tz > settings.near_plane) & (tz < settings.far_plane)
        inside = (
            (means2d[..., 0] + radii[..., 0] > 0)
            & (means2d[..., 0] - radii[..., 0] < width)
            & (means2d[..., 1] + radii[..., 1] > 0)
            & (means2d[..., 1] - radii[..., 1] < height)
        )
        keep = valid & inside & torch.isfinite(radii).all(-1)
        radii = torch.where(keep[..., None], radii, torch.zeros_like(radii)).int()
    if compensation:
        det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - b * b  # [C, N], before the eps2d dilation
        comp = torch.sqrt((det_orig / det).clamp_min(0.0))
        return means2d, conics, tz, radii, comp
    return means2d, conics, tz, radii


def tile_bounds(means2d: Tensor, radii: Tensor, tile_size: int, tiles_x: int, tiles_y: int) -> tuple[Tensor, Tensor]:
    """Inclusive-exclusive tile rectangle [min, max) each Gaussian overlaps. [..., 2] -> two [..., 2] int64."""
    tm = means2d.detach() / tile_size
    tr = radii.to(tm.dtype) / tile_size
    lim = torch.tensor([tiles_x, tiles_y], device=means2d.device)
    lo = torch.minimum(torch.floor(tm - tr).long().clamp(min=0), lim)
    hi = torch.minimum(torch.ceil(tm + tr).long().clamp(min=0), lim)
    return lo, hi


@torch.no_grad()
def binning_radii(conics: Tensor, opacities: Tensor, radii: Tensor, settings: RasterSettings) -> Tensor:
    """Per-axis extent beyond which alpha < alpha_min for this Gaussian's opacity; never above ``radii``.

    alpha = o exp(-sigma) < alpha_min  <=>  sigma > ln(o / alpha_min) =: s, and the ellipse sigma = s spans
    sqrt(2 s Sigma_ii) along axis i (Sigma_2D recovered from the conic). Fragments it drops would be
    skipped by the alpha test anyway, so images and gradients are unchanged; only less work is done.
    """
    a, b, c = conics.detach().unbind(-1)
    det = (a * c - b * b).clamp_min(1e-30)
    s = torch.log(opacities.detach().clamp_min(1e-30) / settings.alpha_min).clamp_min(0.0)  # [N]
    ext = torch.stack([torch.sqrt(2 * s * c / det), torch.sqrt(2 * s * a / det)], dim=-1)  # [N, 2]
    ext = torch.ceil(ext).clamp_max(radii.to(ext.dtype))
    return torch.where((s > 0)[:, None] & (radii > 0), ext, torch.zeros_like(ext)).int()


@torch.no_grad()
def isect_tiles(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
    conics: Tensor | None = None,
    opacities: Tensor | None = None,
    alpha_min: float = 1.0 / 255.0,
) -> tuple[Tensor, Tensor]:
    """All (tile, Gaussian) pairs of one view, sorted by tile then depth; no loop over Gaussians.

    means2d [N, 2], radii [N, 2], depths [N] -> (tile_ids [M], gauss_ids [M]) int64. With ``conics`` [N, 3]
    and ``opacities`` [N], pairs that no pixel of the tile needs are culled before sorting (``tile_touches``).
    """
    n = means2d.shape[0]
    device = means2d.device
    lo, hi = tile_bounds(means2d, radii, tile_size, tiles_x, tiles_y)
    span = (hi - lo).clamp(min=0)  # [N, 2]
    counts = span[:, 0] * span[:, 1] * (radii > 0).all(-1)  # [N]
    gid = torch.repeat_interleave(torch.arange(n, device=device), counts)  # [M]
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(gid.shape[0], device=device) - starts[gid]
    w = span[gid, 0]
    tx = lo[gid, 0] + local % w
    ty = lo[gid, 1] + local // w
    if conics is not None and opacities is not None:
        keep = _touches(tx, ty, gid, means2d, conics, opacities, tile_size, alpha_min)
        tx, ty, gid = tx[keep], ty[keep], gid[keep]
    tile = ty * tiles_x + tx
    # Sort key = tile * N + depth rank: one int64 sort gives tile-major, front-to-back order.
    rank = torch.empty(n, dtype=torch.long, device=device)
    rank[torch.argsort(depths.detach(), stable=True)] = torch.arange(n, device=device)
    order = torch.argsort(tile * n + rank[gid])
    return tile[order], gid[order]


@torch.no_grad()
def tile_touches(
    tile_of: Tensor,
    gauss_of: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    tile_size: int,
    tiles_x: int,
    alpha_min: float,
) -> Tensor:
    """Which (tile, Gaussian) pairs can pass the alpha test at some pixel of the tile. [M] bool.

    The bounding box of the 3-sigma extent also covers tiles that the opacity-scaled ellipse
    sigma(d) = 0.5 d^T C d <= ln(o / alpha_min) never reaches (for round Gaussians the box corners, for
    oblique ones most of the box). The minimum of the convex sigma over the rectangle of the tile's pixel
    centres is 0 when the mean lies inside, else it lies on an edge, where the 1-D minimum along the edge is
    closed form (clamped to the edge). Pairs whose minimum exceeds the threshold would be skipped by the
    alpha test at every pixel, so dropping them changes neither images nor gradients.
    """
    return _touches(
        tile_of % tiles_x,
        torch.div(tile_of, tiles_x, rounding_mode="floor"),
        gauss_of,
        means2d,
        conics,
        opacities,
        tile_size,
        alpha_min,
    )


@torch.no_grad()
def _touches(
    tx: Tensor,
    ty: Tensor,
    gid: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    tile_size: int,
    alpha_min: float,
) -> Tensor:
    if gid.numel() == 0:
        return torch.ones(0, dtype=torch.bool, device=gid.device)
    m = means2d.detach()[gid]
    a, b, c = conics.detach()[gid].unbind(-1)
    x0 = tx.to(m.dtype) * tile_size + 0.5 - m[:, 0]
    y0 = ty.to(m.dtype) * tile_size + 0.5 - m[:, 1]
    x1, y1 = x0 + (tile_size - 1), y0 + (tile_size - 1)

    def sigma(dx: Tensor, dy: Tensor) -> Tensor:
        return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy

    best = torch.where((x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0), 0.0, float("inf"))
    for dx in (x0, x1):  # vertical edges: minimise over dy
        best = torch.minimum(best, sigma(dx, torch.minimum(torch.maximum(-b * dx / c, y0), y1)))
    for dy in (y0, y1):  # horizontal edges: minimise over dx
        best = torch.minimum(best, sigma(torch.minimum(torch.maximum(-b * dy / a, x0), x1), dy))
    thresh = torch.log(opacities.detach()[gid].clamp_min(1e-30) / alpha_min)
    return best <= thresh + 1e-3  # a margin for rounding: keeping a pair is always safe
