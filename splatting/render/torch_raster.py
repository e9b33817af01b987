"""A differentiable tile rasterizer for 3D Gaussians in pure PyTorch (CPU, CUDA, MPS).

3D Gaussian Splatting for Real-Time Radiance Field Rendering, https://arxiv.org/abs/2308.04079, with the
"classic" math of gsplat (https://arxiv.org/abs/2409.06765):

1. EWA projection: Sigma_2D = J W Sigma W^T J^T + eps2d I, J the perspective Jacobian at the (frustum-
   clamped) camera-space mean; conic = Sigma_2D^-1 stored as (a, b, c) = (inv00, inv01, inv11).
2. Extent: radius per axis = ceil(k * sqrt(Sigma_2D[ii])) with k = 3.33 (gsplat 1.5); a Gaussian touches the
   tiles its box overlaps; off-screen, behind-near-plane or degenerate Gaussians get radius 0.
3. Per pixel p (centre at +0.5), Gaussians sorted front to back:
   sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, alpha = min(alpha_max, o exp(-sigma)), skipped when
   sigma < 0 or alpha < 1/255; compositing stops before the Gaussian that would bring the transmittance
   T to <= 1e-4; C = sum_i c_i alpha_i T_i + T_final * background.

Everything is vectorized: the tile intersections are generated with ``repeat_interleave``, pairs whose
opacity-scaled ellipse misses every pixel centre of the tile are culled exactly (``tile_touches``), and the
rest are sorted once by (tile, depth); tiles are grouped by how many Gaussians they hold, so each chunk is a
dense [tiles, K, pixels] block with little padding, and ``cumprod`` along K gives every pixel's
transmittance. Tiles whose pixels are all saturated leave their chunk between depth blocks. The compositing
backward is analytic; it reuses the forward's fragments (exp(-sigma), alpha, T) up to ``store_elems`` floats
per call and recomputes the rest, so memory stays bounded by ``chunk_elems`` + ``store_elems``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from splatting import gaussians
from splatting.render.project import (
    DEFAULT_SETTINGS,
    RasterSettings,
    binning_radii,
    isect_tiles,
    project_ewa,
)
from splatting.render.sh import sh_to_color

__all__ = ["RasterSettings", "DEFAULT_SETTINGS", "rasterize_to_pixels", "rasterize"]


def _offsets(pix: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel minus mean for every slot and pixel: pix [B, P, 2], m [B, K', 2] -> dx, dy [B, K', P]."""
    return pix[:, None, :, 0] - m[..., 0, None], pix[:, None, :, 1] - m[..., 1, None]


def _block_alpha(
    pix: Tensor,
    gids: Tensor,
    slot_ok: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    alpha_min: float,
    alpha_max: float,
):
    """Fragments of K' depth slots of B tiles: dx, dy, exp(-sigma), raw alpha, kept alpha, all [B, K', P]."""
    con = conics[gids]  # [B, K', 3]
    dx, dy = _offsets(pix, means2d[gids])  # [B, K', P] each
    half = 0.5 * con[..., 0::2, None]  # a/2, c/2 [B, K', 2, 1]: per slot, so scaling is cheap
    # sigma = 0.5 (a dx^2 + c dy^2) + b dx dy = dx (a/2 dx + b dy) + c/2 dy^2, with fused multiply-adds
    sigma = torch.addcmul(half[..., 1, :] * dy * dy, dx, torch.addcmul(con[..., 1, None] * dy, half[..., 0, :], dx))
    gauss = torch.exp(-sigma)
    raw = torch.where(slot_ok, opacities[gids], 0.0)[..., None] * gauss  # padded slots: alpha 0, skipped below
    alpha = torch.clamp_max(raw, alpha_max)
    keep = (sigma >= 0) & (alpha >= alpha_min)
    return dx, dy, gauss, raw, torch.where(keep, alpha, torch.zeros_like(alpha))


def _march(alpha: Tensor, t_raw: Tensor, t_used: Tensor, t_min: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Apply early termination to a block and advance the transmittances.

    ``t_raw`` multiplies every kept fragment (also the one that ends the pixel), so once it drops to t_min
    every later fragment is dropped, as the sequential kernel's ``break`` does; ``t_used`` multiplies only
    the fragments composited. Returns (alpha, inclusive T [B, K', P], new t_raw, new t_used).
    """
    t_incl_raw = t_raw[:, None, :] * torch.cumprod(1.0 - alpha, dim=1)
    alpha = torch.where(t_incl_raw > t_min, alpha, torch.zeros_like(alpha))
    t_incl = t_used[:, None, :] * torch.cumprod(1.0 - alpha, dim=1)
    return alpha, t_incl, t_incl_raw[:, -1, :], t_incl[:, -1, :]


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of B tiles, K depth slots each, in blocks of ``k_block`` slots; analytic
    backward that reuses the forward's fragments while the call's ``store_elems`` budget lasts and recomputes
    them after that. After a block, once a quarter of the chunk's tiles have every pixel
    saturated (T <= t_min) those tiles leave it (their later fragments would all be skipped), and the chunk
    stops when none is left; the backward replays the same drops.

    C_p = sum_k alpha_k T_k c_k + T_K bg, T_k = prod_{i<k} (1 - alpha_i). With q_k = alpha_k T_k (c_k . g_p),
    g_p = dL/dC_p, ga_p = dL/d(1 - T_K), the suffix S_k = sum_{j>k} q_j + T_K (bg . g_p) = C_p . g_p -
    sum_{j<=k} q_j is a running prefix, so the backward also walks front to back:
    dL/dalpha_k = T_k (c_k . g_p) - (S_k - T_K ga_p) / (1 - alpha_k); then alpha = o exp(-sigma) (zero gradient
    where clamped or skipped) and sigma's partials in the conic (a, b, c) and the mean give the rest.
    """

    @staticmethod
    def forward(
        ctx,
        pix,
        gids,
        slot_ok,
        means2d,
        conics,
        opacities,
        colors,
        background,
        alpha_min,
        alpha_max,
        t_min,
        k_block,
        budget,
    ):
        n_tiles, k_total = gids.shape
        n_pix = pix.shape[1]
        t_raw = torch.ones(n_tiles, n_pix, dtype=pix.dtype, device=pix.device)
        t_used = t_raw.clone()
        color = torch.zeros(n_tiles, n_pix, colors.shape[-1], dtype=pix.dtype, device=pix.device)
        t_used_all, color_all = t_used, color
        live = torch.arange(n_tiles, device=pix.device)  # chunk tiles still compositing
        px, gi, ok = pix, gids, slot_ok
        drops = []  # (slot k, keep): from slot k on only live[keep] go on (their pixels are not all saturated)
        stored = []  # per block: (exp(-sigma), alpha, inclusive T, t_raw after it), or None past the budget
        want = any(ctx.needs_input_grad[3:8])  # rendering without gradients keeps nothing
        k_end = 0
        with torch.no_grad():
            for k0 in range(0, k_total, k_block):
                g = gi[:, k0 : k0 + k_block]
                _, _, gauss, _, alpha = _block_alpha(
                    px, g, ok[:, k0 : k0 + k_block], means2d, conics, opacities, alpha_min, alpha_max
                )
                alpha, t_incl, t_raw, t_next = _march(alpha, t_raw, t_used, t_min)
                weights = alpha * (t_incl / (1.0 - alpha))  # alpha_k T_k
                color += torch.einsum("bkp,bkd->bpd", weights, colors[g])
                t_used = t_next
                if want and budget[0] >= 3 * alpha.numel():  # keep them: the backward skips recomputing them
                    budget[0] -= 3 * alpha.numel()
                    stored.append((gauss, alpha, t_incl, t_raw))
                else:
                    stored.append(None)
                k_end = k0 + k_block
                if k_end >= k_total:
                    break
                going = (t_raw > t_min).any(1)  # [B_live]
                n_going = int(going.sum())
                if n_going == 0:
                    break
                if n_going <= 0.75 * going.shape[0]:  # a quarter of the tiles are saturated: drop them
                    if drops:
                        t_used_all[live], color_all[live] = t_used, color
                    else:  # still full size: the gathers below make new tensors, these stay as the outputs
                        t_used_all, color_all = t_used.clone(), color  # t_used is a view of a kept t_incl
                    keep = going.nonzero()[:, 0]
                    live, px, gi, ok = live[keep], px[keep], gi[keep], ok[keep]
                    t_raw, t_used, color = t_raw[keep], t_used[keep], color[keep]
                    drops.append((k_end, keep))
            if drops:
                t_used_all[live], color_all[live] = t_used, color
                t_used, color = t_used_all, color_all
            out = color + t_used[..., None] * background
        ctx.save_for_backward(pix, gids, slot_ok, means2d, conics, opacities, colors, background, out, t_used)
        ctx.consts = (alpha_min, alpha_max, t_min, k_block, k_end)
        ctx.drops = drops
        ctx.stored = stored
        return out, 1.0 - t_used

    @staticmethod
    def backward(ctx, g_color, g_alpha):
        pix, gids, slot_ok, means2d, conics, opacities, colors, background, out, t_final = ctx.saved_tensors
        alpha_min, alpha_max, t_min, k_block, k_end = ctx.consts
        d = colors.shape[-1]
        need_m, need_c, need_o, need_col, need_bg = (ctx.needs_input_grad[i] for i in (3, 4, 5, 6, 7))
        g_means = torch.zeros_like(means2d) if need_m else None
        g_conics = torch.zeros_like(conics) if need_c else None
        g_opac = torch.zeros_like(opacities) if need_o else None
        g_colors = torch.zeros_like(colors) if need_col else None
        # per-tile constants: C_p . g_p - T_K ga_p (the suffix S_k = that - q_incl), g_p
        cg_ga = (out * g_color).sum(-1) - t_final * g_alpha  # [B, P]
        gc = g_color
        px, gi, ok = pix, gids, slot_ok
        t_raw = torch.ones_like(t_final)
        t_used = torch.ones_like(t_final)
        q_prefix = torch.zeros_like(t_final)
        drops = iter(ctx.drops)
        k_drop, keep = next(drops, (None, None))
        for k0 in range(0, k_end, k_block):
            if k0 == k_drop:  # replay the forward's dropping of saturated tiles
                px, gi, ok, gc, cg_ga = px[keep], gi[keep], ok[keep], gc[keep], cg_ga[keep]
                t_raw, t_used, q_prefix = t_raw[keep], t_used[keep], q_prefix[keep]
                k_drop, keep = next(drops, (None, None))
            g = gi[:, k0 : k0 + k_block]
            kept = ctx.stored[k0 // k_block]
            if kept is not None:  # the forward's fragments: only dx, dy and the raw alpha are recomputed
                gauss, alpha, t_incl, t_raw = kept
                dx, dy = _offsets(px, means2d[g])
                raw = opacities[g][..., None] * gauss  # wrong on padded slots, where alpha = 0 masks it
                t_next = t_incl[:, -1, :]
            else:
                dx, dy, gauss, raw, alpha = _block_alpha(
                    px, g, ok[:, k0 : k0 + k_block], means2d, conics, opacities, alpha_min, alpha_max
                )
                alpha, t_incl, t_raw, t_next = _march(alpha, t_raw, t_used, t_min)
            one_minus = 1.0 - alpha
            t_excl = t_incl / one_minus  # T_k
            cg = torch.einsum("bkd,bpd->bkp", colors[g], gc)  # c_k . g_p
            w = alpha * t_excl
            q_incl = q_prefix[:, None, :] + torch.cumsum(w * cg, dim=1)
            d_alpha = t_excl * cg - (cg_ga[:, None, :] - q_incl) / one_minus
            d_alpha = torch.where((alpha > 0) & (raw < alpha_max), d_alpha, torch.zeros_like(d_alpha))
            flat = g.reshape(-1)
            if need_col:
                g_colors.index_add_(0, flat, torch.einsum("bkp,bpd->bkd", w, gc).reshape(-1, d))
            if need_o:
                g_opac.index_add_(0, flat, (d_alpha * gauss).sum(-1).reshape(-1))
            if need_m or need_c:
                # e = -dL/dsigma per fragment; the conic and mean partials are sums over the tile's pixels of
                # e times dx^2, dx dy, dy^2 (conic) and e dx, e dy (mean), times per-slot constants
                e = d_alpha * raw  # [B, K', P]
                u, v = e * dx, e * dy
                if need_c:
                    g_conics.index_add_(
                        0,
                        flat,
                        torch.stack(
                            [-0.5 * (u * dx).sum(-1), -(u * dy).sum(-1), -0.5 * (v * dy).sum(-1)], dim=-1
                        ).reshape(-1, 3),
                    )
                if need_m:  # d sigma / d mean = -(a dx + b dy, c dy + b dx)
                    su, sv = u.sum(-1), v.sum(-1)  # [B, K']
                    a, b, c = conics[g].unbind(-1)
                    g_means.index_add_(0, flat, torch.stack([a * su + b * sv, c * sv + b * su], dim=-1).reshape(-1, 2))
            q_prefix = q_incl[:, -1, :]
            t_used = t_next
        g_bg = (t_final[..., None] * g_color).sum((0, 1)) if need_bg else None
        ctx.stored = None
        return None, None, None, g_means, g_conics, g_opac, g_colors, g_bg, None, None, None, None, None


def rasterize_to_pixels(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    settings: RasterSettings = DEFAULT_SETTINGS,
    store_budget: list[int] | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Rasterize one view. [N, 2], [N, 3], [N], [N, D], [N, 2], [N] -> image [H, W, D], alpha [H, W, 1], M.

    ``store_budget`` ([floats]) is how many forward fragment values may be kept for the backward; it is
    decremented in place, so views rendered together share it (default: ``settings.store_elems``)."""
    budget = store_budget if store_budget is not None else [settings.store_elems]
    ts = settings.tile_size
    tiles_x, tiles_y = math.ceil(width / ts), math.ceil(height / ts)
    n_tiles, n_pix = tiles_x * tiles_y, ts * ts
    device, dtype, d = means2d.device, means2d.dtype, colors.shape[-1]
    bg = background if background is not None else torch.zeros(d, device=device, dtype=dtype)

    tile_of, gauss_of = isect_tiles(
        means2d,
        binning_radii(conics, opacities, radii, settings),
        depths,
        ts,
        tiles_x,
        tiles_y,
        conics,
        opacities,
        settings.alpha_min,
    )
    counts = torch.bincount(tile_of, minlength=n_tiles)  # [T]
    offsets = torch.cumsum(counts, 0) - counts
    order = torch.argsort(counts, descending=True, stable=True)  # fullest tiles first
    counts_sorted = counts[order].tolist()
    n_busy = sum(1 for c in counts_sorted if c > 0)

    ly, lx = torch.meshgrid(torch.arange(ts, device=device), torch.arange(ts, device=device), indexing="ij")
    local = torch.stack([lx.reshape(-1), ly.reshape(-1)], dim=-1).to(dtype) + 0.5  # [P, 2]

    outs_c, outs_a = [], []
    start = 0
    while start < n_busy:
        k = counts_sorted[start]
        b = max(1, min(n_busy - start, settings.chunk_elems // max(1, min(k, settings.k_block) * n_pix)))
        # cap the padding: a chunk holds only tiles with at least ``pad_ratio`` of its first tile's count
        floor = k * settings.pad_ratio
        while b > 1 and counts_sorted[start + b - 1] < floor:
            b = max(1, b // 2) if counts_sorted[start + b // 2] < floor else b - 1
        tiles = order[start : start + b]  # [B]
        slots = torch.arange(k, device=device)
        slot_ok = slots[None, :] < counts[tiles][:, None]  # [B, K]
        idx = (offsets[tiles][:, None] + slots[None, :]).clamp(max=max(tile_of.shape[0] - 1, 0))
        gids = torch.where(slot_ok, gauss_of[idx], torch.zeros_like(idx))
        origin = torch.stack([tiles % tiles_x, tiles // tiles_x], dim=-1).to(dtype) * ts  # [B, 2]
        pix = origin[:, None, :] + local[None]  # [B, P, 2]
        args = (
            pix,
            gids,
            slot_ok,
            means2d,
            conics,
            opacities,
            colors,
            bg,
            settings.alpha_min,
            settings.alpha_max,
            settings.transmittance_min,
            settings.k_block,
            budget,
        )
        col, alp = _Composite.apply(*args)
        outs_c.append(col)
        outs_a.append(alp)
        start += b
    n_idle = n_tiles - n_busy
    if n_idle:
        outs_c.append(bg.expand(n_idle, n_pix, d))
        outs_a.append(torch.zeros(n_idle, n_pix, device=device, dtype=dtype))
    inv = torch.empty_like(order)
    inv[order] = torch.arange(n_tiles, device=device)
    tile_c = torch.cat(outs_c, 0)[inv]  # [T, P, D] in tile order
    tile_a = torch.cat(outs_a, 0)[inv]  # [T, P]

    def untile(x: Tensor) -> Tensor:  # [T, P, D'] -> [H, W, D']
        x = x.reshape(tiles_y, tiles_x, ts, ts, -1).permute(0, 2, 1, 3, 4)
        return x.reshape(tiles_y * ts, tiles_x * ts, -1)[:height, :width]

    return untile(tile_c), untile(tile_a[..., None]), int(tile_of.shape[0])


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    settings: RasterSettings = DEFAULT_SETTINGS,
) -> tuple[Tensor, Tensor, dict]:
    """Render C views of N Gaussians (gsplat's ``rasterization`` signature, classic mode, unpacked).

    means [N, 3], quats [N, 4] wxyz, scales [N, 3] (linear), opacities [N] in (0, 1),
    colors [N, D] or SH coefficients [N, K, 3] with ``sh_degree``, viewmats [C, 4, 4], Ks [C, 3, 3],
    backgrounds [C, D] or None (black).
    Returns images [C, H, W, D], alphas [C, H, W, 1] and ``info`` with the graph tensors a densification
    strategy needs: means2d [C, N, 2], conics [C, N, 3], opacities [C, N] (call ``retain_grad`` on them
    before backward), radii [C, N, 2], depths [C, N], width, height, n_cameras, tile_size, n_isects.
    """
    n_cams = viewmats.shape[0]
    covars = gaussians.covariance_3d(quats, scales)
    if settings.mode == "antialiased":
        means2d, conics, depths, radii, comp = project_ewa(
            means, covars, viewmats, Ks, width, height, settings, compensation=True
        )
        view_opac = opacities[None, :] * comp  # [C, N] per-view opacities, filtered (own node in the graph)
    else:
        means2d, conics, depths, radii = project_ewa(means, covars, viewmats, Ks, width, height, settings)
        view_opac = opacities[None, :].repeat(n_cams, 1)  # [C, N] per-view opacities (own node in the graph)
    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
        view_colors = torch.clamp_min(
            sh_to_color(sh_degree, dirs, colors[None].expand(n_cams, -1, -1, -1)) + 0.5, 0.0
        )  # [C, N, 3]
    else:
        view_colors = colors[None].expand(n_cams, -1, -1)
    images, alphas, n_isects = [], [], 0
    budget = [settings.store_elems]  # shared by the views: bounds what the whole call keeps for the backward
    for c in range(n_cams):  # views are few; Gaussians and pixels are vectorized
        bg = backgrounds[c] if backgrounds is not None else None
        img, alp, m = rasterize_to_pixels(
            means2d[c],
            conics[c],
            view_opac[c],
            view_colors[c],
            radii[c],
            depths[c],
            width,
            height,
            bg,
            settings,
            budget,
        )
        images.append(img)
        alphas.append(alp)
        n_isects += m
    info = {
        "means2d": means2d,
        "conics": conics,
        "opacities": view_opac,
        "radii": radii,
        "depths": depths,
        "width": width,
        "height": height,
        "n_cameras": n_cams,
        "tile_size": settings.tile_size,
        "n_isects": n_isects,
    }
    return torch.stack(images), torch.stack(alphas), info
