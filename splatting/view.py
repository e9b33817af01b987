"""``genai-train splat view``: a browser viewer (viser) of a run's newest checkpoint or of a PLY, with the
training cameras as frustums.

viser is imported only here, when the command runs; without it the command says how to install it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from splatting.colmap import View
from splatting.config import ViewCommandConfig
from splatting.gaussians import covariance_3d, sh_to_rgb

__all__ = ["viser_arrays", "default_camera", "start_viewer", "run_view"]


def _import_viser():
    try:
        import viser
    except ImportError as e:
        raise RuntimeError("splat view needs the viser package (a browser 3-D viewer): pip install viser") from e
    return viser


def viser_arrays(params: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Our parameters as viser's Gaussian-splat node takes them: centres [N, 3], covariances [N, 3, 3]
    (R S S^T R^T with S = exp(log-scales)), rgb [N, 3] from SH degree 0, opacities [N, 1] = sigmoid(logit)."""
    with torch.no_grad():
        p = {k: v.detach().float().cpu() for k, v in params.items()}
        keep = torch.isfinite(p["means"]).all(-1) & torch.isfinite(p["scales"]).all(-1)
        keep &= torch.isfinite(p["quats"]).all(-1) & torch.isfinite(p["opacities"])
        p = {k: v[keep] for k, v in p.items()}
        return {
            "centers": p["means"].numpy(),
            "covariances": covariance_3d(p["quats"], torch.exp(p["scales"])).numpy(),
            "rgbs": sh_to_rgb(p["sh0"][:, 0, :]).clamp(0, 1).numpy(),
            "opacities": torch.sigmoid(p["opacities"])[:, None].numpy(),
        }


def default_camera(centers: np.ndarray, views: list[View]) -> dict[str, tuple[float, float, float]]:
    """Where the browser's camera starts: at the first training camera looking at the Gaussians' median (or,
    without cameras, from a diagonal at twice their spread), the cameras' mean up direction as up."""
    look = np.median(centers, axis=0) if len(centers) else np.zeros(3)
    if views:
        c2w = np.stack([v.camtoworld.detach().cpu().numpy() for v in views])
        position = c2w[0, :3, 3]
        up = -c2w[:, :3, 1].mean(0)  # COLMAP cameras: +y points down in the image
        up = up / max(float(np.linalg.norm(up)), 1e-9)
    else:
        spread = float(np.percentile(np.linalg.norm(centers - look, axis=-1), 90)) if len(centers) else 1.0
        position = look + 2.0 * max(spread, 1e-3) * np.array([1.0, 1.0, 0.6]) / np.linalg.norm([1.0, 1.0, 0.6])
        up = np.array([0.0, 0.0, 1.0])
    return {
        "position": tuple(float(x) for x in position),
        "look_at": tuple(float(x) for x in look),
        "up": tuple(float(x) for x in up),
    }


def start_viewer(
    params: dict[str, Tensor] | None,
    views: list[View],
    port: int = 8080,
    camera: dict[str, tuple[float, float, float]] | None = None,
):
    """A running viser server showing ``params`` (None: no Gaussians) and ``views`` as frustums."""
    viser = _import_viser()
    server = viser.ViserServer(host="0.0.0.0", port=port, verbose=False)
    arrays = viser_arrays(params) if params is not None else None
    cam = camera or default_camera(arrays["centers"] if arrays else np.zeros((0, 3)), views)
    server.scene.set_up_direction(cam["up"])
    server.initial_camera.position = cam["position"]
    server.initial_camera.look_at = cam["look_at"]
    server.initial_camera.up = cam["up"]
    if arrays is not None and len(arrays["centers"]):
        server.scene.add_gaussian_splats("/gaussians", **arrays)
    if views:
        c2w = np.stack([v.camtoworld.detach().cpu().numpy() for v in views])
        spread = float(np.linalg.norm(c2w[:, :3, 3] - c2w[:, :3, 3].mean(0), axis=-1).mean())
        size = max(0.05 * spread, 1e-3)
        for i, (v, m) in enumerate(zip(views, c2w)):
            fy = float(v.K[1, 1])
            server.scene.add_camera_frustum(
                f"/cameras/{i:04d}",
                fov=2 * math.atan(v.height / (2 * fy)),
                aspect=v.width / v.height,
                scale=size,
                thickness=0.1 * size,
                color=(230, 120, 20),
                wxyz=viser.transforms.SO3.from_matrix(m[:3, :3]).wxyz,
                position=m[:3, 3],
            )
    return server


def _inputs(cfg: ViewCommandConfig) -> tuple[dict[str, Tensor], list[View]]:
    from splatting.evaluate import _into_scene_frame, _scene_for, load_gaussians

    if not cfg.run and not cfg.ply:
        raise ValueError("pass --run DIR (a splat training run) or --ply FILE")
    if cfg.ply and not Path(cfg.ply).is_file():
        raise FileNotFoundError(f"--ply {cfg.ply}: no such file")
    if cfg.run and not Path(cfg.run).is_dir():
        raise FileNotFoundError(f"--run {cfg.run}: no such run folder (train one with genai-train splat train)")
    params = load_gaussians(cfg.run, cfg.ply, "cpu")
    views: list[View] = []
    if cfg.run:
        try:
            scene = _scene_for(cfg.run, "", 0, check_images=False)
        except (OSError, ValueError) as e:  # the scene moved or the run recorded none: Gaussians only
            print(f"no training cameras shown ({e})")
        else:
            views = scene.train
            params = _into_scene_frame(params, cfg.ply, "colmap", scene)  # an exported PLY is in COLMAP's frame
    return params, views


def run_view(cfg: ViewCommandConfig) -> dict:
    params, views = _inputs(cfg)  # errors about the inputs come before the viser import
    server = start_viewer(params, views, cfg.port)
    port = server.get_port()
    n = int(params["means"].shape[0])
    print(f"viewer: http://localhost:{port} ({n} Gaussians, {len(views)} cameras; Ctrl-C stops)", flush=True)
    try:
        if cfg.seconds > 0:
            time.sleep(cfg.seconds)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return {"url": f"http://localhost:{port}", "n_gaussians": n, "n_cameras": len(views)}
