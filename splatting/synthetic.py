"""A small synthetic scene written in COLMAP format, for the demo and the tests.

Ground truth is a cloud of coloured Gaussians (a ring of blobs around a sphere) rendered with our
rasterizer from cameras on a circle; the COLMAP model (``pycolmap``) holds the exact cameras and a noisy
subset of the Gaussian centres as SfM points, so training must recover the detail from images.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from splatting.render.torch_raster import rasterize

__all__ = ["make_gt_gaussians", "look_at", "write_colmap_scene"]


def make_gt_gaussians(n: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n_ring = n // 2
    t = torch.rand(n_ring, generator=g) * 2 * math.pi
    ring = torch.stack([0.9 * torch.cos(t), 0.9 * torch.sin(t), 0.15 * torch.sin(3 * t)], dim=-1)
    d = torch.nn.functional.normalize(torch.randn(n - n_ring, 3, generator=g), dim=-1)
    ball = 0.45 * d
    means = torch.cat([ring, ball]) + 0.02 * torch.randn(n, 3, generator=g)
    hue = torch.cat([t / (2 * math.pi), 0.5 + 0.5 * d[:, 2]])
    colors = torch.stack([0.5 + 0.5 * torch.cos(2 * math.pi * (hue + k / 3)) for k in range(3)], dim=-1)
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),
        "scales": 0.03 + 0.05 * torch.rand(n, 3, generator=g),
        "opacities": 0.6 + 0.4 * torch.rand(n, generator=g),
        "colors": colors.clamp(0.05, 0.95),
    }


def look_at(pos: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Camera-to-world [4, 4] (OpenCV axes: x right, y down, z forward)."""
    fwd = torch.nn.functional.normalize(target - pos, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(fwd, up), dim=0)
    down = torch.linalg.cross(fwd, right)
    c2w = torch.eye(4, dtype=pos.dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, pos
    return c2w


def write_colmap_scene(
    out: str | os.PathLike,
    n_views: int = 16,
    width: int = 96,
    height: int = 72,
    n_gaussians: int = 400,
    n_points: int = 300,
    seed: int = 0,
    binary: bool = True,
    models: tuple[str, ...] = ("PINHOLE",),
    sparse_subdir: str = "sparse/0",
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> dict:
    """Render a synthetic capture and write ``out/images/*.png`` + a COLMAP model in ``out/<sparse_subdir>``.

    ``models`` cycles over the views (one camera per image); only the pinhole part is used for the images,
    so non-pinhole models are for loader tests. Returns the ground truth (c2w, K, sizes, points).
    """
    import imageio.v3 as iio
    import pycolmap

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    gt = make_gt_gaussians(n_gaussians, seed)
    rng = np.random.default_rng(seed)
    rec = pycolmap.Reconstruction()
    truth = {"c2w": [], "K": [], "size": [], "names": [], "models": []}
    bg = torch.tensor(background)
    for i in range(n_views):
        a = 2 * math.pi * i / n_views
        pos = torch.tensor([3.0 * math.cos(a), 3.0 * math.sin(a), 1.2 + 0.3 * math.sin(2 * a)])
        c2w = look_at(pos, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
        w = width + (8 if i % 5 == 4 else 0)  # mixed image sizes
        h = height
        f = 1.1 * w
        model = models[i % len(models)]
        aspect = 1.02 if model in ("PINHOLE", "OPENCV") else 1.0  # single-focal models have fx = fy
        K = torch.tensor([[f, 0.0, w / 2], [0.0, f * aspect, h / 2], [0.0, 0.0, 1.0]])
        with torch.no_grad():
            img, _, _ = rasterize(
                gt["means"],
                gt["quats"],
                gt["scales"],
                gt["opacities"],
                gt["colors"],
                torch.linalg.inv(c2w)[None],
                K[None],
                w,
                h,
                backgrounds=bg[None],
            )
        name = f"view_{i:03d}.png"
        iio.imwrite(out / "images" / name, (img[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
        cam = pycolmap.Camera.create_from_model_name(i + 1, model, float(f), w, h)
        fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
        params = {
            "SIMPLE_PINHOLE": [fx, cx, cy],
            "PINHOLE": [fx, fy, cx, cy],
            "SIMPLE_RADIAL": [fx, cx, cy, 0.0],
            "RADIAL": [fx, cx, cy, 0.0, 0.0],
            "OPENCV": [fx, fy, cx, cy, 0.0, 0.0, 0.0, 0.0],
        }.get(model)
        if params is None:  # an unsupported model for error tests: keep pycolmap's default parameters
            params = list(cam.params)
        cam.params = params
        rec.add_camera_with_trivial_rig(cam)
        w2c = torch.linalg.inv(c2w.double())[:3, :4].numpy()
        im = pycolmap.Image(name=name, camera_id=i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d(matrix=w2c))
        truth["c2w"].append(c2w)
        truth["K"].append(K)
        truth["size"].append((w, h))
        truth["names"].append(name)
        truth["models"].append(model)
    idx = rng.choice(n_gaussians, size=min(n_points, n_gaussians), replace=False)
    pts = gt["means"][idx].numpy() + rng.normal(0, 0.03, size=(len(idx), 3))
    cols = (gt["colors"][idx].numpy() * 255).astype(np.uint8)
    for p, c in zip(pts, cols):
        rec.add_point3D(p.astype(np.float64), pycolmap.Track(), c)
    sparse = out / sparse_subdir
    sparse.mkdir(parents=True, exist_ok=True)
    if binary:
        rec.write_binary(str(sparse))
    else:
        rec.write_text(str(sparse))
    truth["points"] = torch.from_numpy(pts)
    return truth
