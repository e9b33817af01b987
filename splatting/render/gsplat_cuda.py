"""gsplat's CUDA rasterizer behind the same call as :func:`splatting.render.torch_raster.rasterize`.

gsplat is imported only when CUDA is available: on a machine without a GPU, importing its CUDA wrapper
would try to JIT-compile kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from splatting.render.torch_raster import DEFAULT_SETTINGS, RasterSettings

__all__ = ["available", "rasterize"]


def available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


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
    if not means.is_cuda:
        raise ValueError("the gsplat backend needs CUDA tensors; use render.backend=torch on this device")
    from gsplat import rasterization

    images, alphas, info = rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane=settings.near_plane,
        far_plane=settings.far_plane,
        eps2d=settings.eps2d,
        sh_degree=sh_degree,
        packed=False,
        tile_size=settings.tile_size,
        backgrounds=backgrounds,
        rasterize_mode=settings.mode,
    )
    info = dict(info)
    info.setdefault("n_isects", int(info["isect_ids"].shape[0]) if "isect_ids" in info else 0)
    return images, alphas, info
