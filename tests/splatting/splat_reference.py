"""A brute-force per-pixel Gaussian renderer: the sequential loop of the CUDA kernel, written plainly.

For every pixel, Gaussians are visited one at a time in depth order with the kernel's exact branches
(3-sigma tile box, sigma < 0, alpha < 1/255 skip, stop when T would drop to <= 1e-4). Pixels are
vectorized only so the test runs in seconds; no tiling, sorting tricks or cumprod.
"""

from __future__ import annotations

import torch

from splatting.render.project import DEFAULT_SETTINGS, RasterSettings, tile_bounds


def reference_render(
    means2d,
    conics,
    opacities,
    colors,
    radii,
    depths,
    width,
    height,
    background=None,
    settings: RasterSettings = DEFAULT_SETTINGS,
):
    """[N, 2], [N, 3], [N], [N, D], [N, 2], [N] -> image [H, W, D], alpha [H, W, 1]."""
    ts = settings.tile_size
    tiles_x, tiles_y = -(-width // ts), -(-height // ts)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    px = xs.reshape(-1).to(means2d.dtype) + 0.5
    py = ys.reshape(-1).to(means2d.dtype) + 0.5
    tile_x, tile_y = xs.reshape(-1) // ts, ys.reshape(-1) // ts
    lo, hi = tile_bounds(means2d, radii, ts, tiles_x, tiles_y)
    n_pix = px.shape[0]
    T = torch.ones(n_pix, dtype=means2d.dtype)
    out = torch.zeros(n_pix, colors.shape[-1], dtype=means2d.dtype)
    done = torch.zeros(n_pix, dtype=torch.bool)
    for i in torch.argsort(depths, stable=True).tolist():
        if not bool((radii[i] > 0).all()):
            continue
        in_box = (tile_x >= lo[i, 0]) & (tile_x < hi[i, 0]) & (tile_y >= lo[i, 1]) & (tile_y < hi[i, 1])
        dx, dy = px - means2d[i, 0], py - means2d[i, 1]
        sigma = 0.5 * (conics[i, 0] * dx * dx + conics[i, 2] * dy * dy) + conics[i, 1] * dx * dy
        alpha = torch.clamp_max(opacities[i] * torch.exp(-sigma), settings.alpha_max)
        use = in_box & ~done & (sigma >= 0) & (alpha >= settings.alpha_min)
        next_T = T * (1 - alpha)
        stop = use & (next_T <= settings.transmittance_min)
        done = done | stop
        use = use & ~stop
        out = out + torch.where(use[:, None], (alpha * T)[:, None] * colors[i], torch.zeros_like(out))
        T = torch.where(use, next_T, T)
    if background is not None:
        out = out + T[:, None] * background
    return out.reshape(height, width, -1), (1 - T).reshape(height, width, 1)
