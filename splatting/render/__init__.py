"""One render call, two backends: our pure-PyTorch tile rasterizer (any device) and gsplat's CUDA one."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from splatting.render import gsplat_cuda, torch_raster
from splatting.render.torch_raster import DEFAULT_SETTINGS, RasterSettings

__all__ = ["RasterSettings", "render", "resolve_backend"]


def resolve_backend(backend: Literal["auto", "torch", "gsplat"], device) -> str:
    """``auto``: gsplat on CUDA when it is installed, else the PyTorch rasterizer."""
    dev_type = getattr(device, "type", str(device))
    if backend == "auto":
        return "gsplat" if dev_type == "cuda" and gsplat_cuda.available() else "torch"
    if backend == "gsplat" and not (dev_type == "cuda" and gsplat_cuda.available()):
        raise ValueError(
            "render.backend=gsplat needs a CUDA device and the gsplat package; use "
            "render.backend=torch (runs everywhere) or auto"
        )
    if backend not in ("torch", "gsplat"):
        raise ValueError(f"render.backend must be auto, torch or gsplat, got {backend!r}")
    return backend


def render(
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
    backend: str = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """Render C views: images [C, H, W, D], alphas [C, H, W, 1], info (means2d, conics, opacities, radii)."""
    fn = gsplat_cuda.rasterize if resolve_backend(backend, means.device) == "gsplat" else torch_raster.rasterize
    images, alphas, info = fn(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        sh_degree=sh_degree,
        backgrounds=backgrounds,
        settings=settings,
    )
    info["viewmats"], info["Ks"] = viewmats, Ks  # the cameras, for strategies that lift screen-space terms to 3-D
    return images, alphas, info
