"""Evaluation of Gaussians on held-out views, and the ``splat eval``, ``render`` and ``export`` commands.

The commands read a run's saved ``config.yaml`` with the same typed loader as training (scene, factor,
background), and its newest checkpoint (or a PLY).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from genai_train.checkpoint import Checkpointer
from genai_train.config import load_config
from genai_train.device import select_device
from splatting.colmap import Scene, View, load_scene
from splatting.config import EvalCommandConfig, ExportCommandConfig, RenderCommandConfig, TrainConfig
from splatting.gaussians import transform_gaussians
from splatting.metrics import LPIPSUnavailable, lpips_metric, psnr, ssim
from splatting.ply import load_ply, save_ply
from splatting.render import RasterSettings, render
from splatting.render.project import DEFAULT_SETTINGS

__all__ = [
    "render_view",
    "evaluate",
    "eval_background",
    "load_gaussians",
    "saved_config",
    "orbit_cameras",
    "run_eval",
    "run_render",
    "run_export",
]


def render_view(
    params: dict[str, Tensor],
    view: View,
    sh_degree: int,
    device: torch.device,
    settings: RasterSettings = DEFAULT_SETTINGS,
    backend: str = "auto",
    background: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Render one view: image [H, W, 3], alpha [H, W, 1], info."""
    colors = torch.cat([params["sh0"], params["shN"]], dim=1)  # [N, K, 3]
    img, alpha, info = render(
        params["means"],
        params["quats"],
        torch.exp(params["scales"]),
        torch.sigmoid(params["opacities"]),
        colors,
        view.viewmat.to(device)[None],
        view.K.to(device)[None],
        view.width,
        view.height,
        sh_degree=sh_degree,
        backgrounds=None if background is None else background[None],
        settings=settings,
        backend=backend,
    )
    return img[0], alpha[0], info


def eval_background(kind: str, device) -> Tensor | None:
    """Test views are rendered on white when training used white, else on black (gsplat's convention)."""
    return torch.ones(3, device=device) if kind == "white" else None


@torch.no_grad()
def evaluate(
    params: dict[str, Tensor],
    scene: Scene,
    views: list[View],
    sh_degree: int,
    device: torch.device,
    settings: RasterSettings = DEFAULT_SETTINGS,
    backend: str = "auto",
    out_dir: Path | None = None,
    lpips_net: str = "alex",
    lpips_weights: str = "",
    log=print,
    background: Tensor | None = None,
) -> dict:
    """PSNR / SSIM / LPIPS (when its weights exist locally) and render time over ``views``."""
    rows, lpips_note = [], None
    for v in views:
        gt = scene.image(v).to(device)
        t0 = time.perf_counter()
        img, _, _ = render_view(params, v, sh_degree, device, settings, backend, background)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        img = img.clamp(0, 1)
        row = {"view": v.name, "psnr": float(psnr(img, gt)), "ssim": float(ssim(img, gt)), "render_s": dt}
        if lpips_note is None:
            try:
                row["lpips"] = float(lpips_metric(img, gt, lpips_net, lpips_weights or None))
            except LPIPSUnavailable as e:
                lpips_note = str(e)
                log(lpips_note)
        rows.append(row)
        if out_dir is not None:
            import imageio.v3 as iio

            out_dir.mkdir(parents=True, exist_ok=True)
            pair = torch.cat([img, gt], dim=1).cpu().numpy()
            iio.imwrite(out_dir / f"{Path(v.name).stem}.png", (pair * 255 + 0.5).astype("uint8"))
    out = {"n_views": len(rows), "n_gaussians": int(params["means"].shape[0]), "views": rows}
    for k in ("psnr", "ssim", "lpips", "render_s"):
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k] = sum(vals) / len(vals)
    if lpips_note:
        out["lpips_skipped"] = lpips_note
    return out


def load_gaussians(
    run_dir: str | Path = "", ply: str | Path = "", device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Gaussians from a PLY file, or from the newest checkpoint of a run folder."""
    if ply:
        return {k: v.to(device) for k, v in load_ply(ply).items()}
    if not run_dir:
        raise ValueError("pass --run.dir of a splat training run or --ply FILE")
    latest = Checkpointer(Path(run_dir) / "ckpt", task="splat").load_latest(map_location=device)
    if latest is None:
        raise ValueError(
            f"{run_dir}: no complete checkpoint under {run_dir}/ckpt; train first "
            f"(genai-train splat train --scene DIR --run.dir {run_dir}) or pass --ply FILE"
        )
    return {k: v.to(device) for k, v in latest[1]["gaussians"].items()}


def sh_degree_of(params: dict[str, Tensor]) -> int:
    return int(math.isqrt(params["shN"].shape[1] + 1)) - 1


def saved_config(run_dir: str | Path) -> TrainConfig | None:
    """The config a training run saved (typed, strictly checked), or None without a run folder."""
    path = Path(run_dir) / "config.yaml" if run_dir else None
    return load_config(TrainConfig, path) if path is not None and path.exists() else None


def _run_settings(run_dir: str) -> RasterSettings:
    """The rasterizer settings a run trained with (its render.mode: classic or antialiased)."""
    saved = saved_config(run_dir)
    return RasterSettings(mode=saved.render.mode) if saved is not None else DEFAULT_SETTINGS


def _run_background(run_dir: str, choice: str, device) -> Tensor | None:
    if choice != "auto":
        return eval_background(choice, device)
    saved = saved_config(run_dir)
    return eval_background(saved.render.background if saved else "black", device)


def _scene_for(run_dir: str, scene: str, factor: int, check_images: bool = True) -> Scene:
    saved = saved_config(run_dir)
    data = saved.data if saved is not None else TrainConfig().data
    root = scene or data.root
    if not root:
        raise ValueError("no scene: pass --scene DIR (or --run_dir of a run that recorded one)")
    return load_scene(
        root,
        factor or data.factor,
        data.test_every,
        data.normalize,
        data.image_dir,
        data.cache_dir or None,
        skip_unreadable=data.skip_unreadable,
        check_images=check_images,
    )


def run_eval(cfg: EvalCommandConfig) -> dict:
    device = select_device(cfg.device)
    params = load_gaussians(cfg.run_dir, cfg.ply, device)
    scene = _scene_for(cfg.run_dir, cfg.scene, cfg.factor)
    params = _into_scene_frame(params, cfg.ply, cfg.ply_frame, scene)
    views = scene.test if cfg.split == "test" else scene.train
    out = Path(cfg.out or (Path(cfg.run_dir) / "eval" if cfg.run_dir else "splat_eval"))
    m = evaluate(
        params,
        scene,
        views,
        sh_degree_of(params),
        device,
        settings=_run_settings(cfg.run_dir),
        backend=cfg.backend,
        out_dir=out / "renders",
        lpips_net=cfg.lpips_net,
        lpips_weights=cfg.lpips_weights,
        background=_run_background(cfg.run_dir, cfg.background, device),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    print(
        f"{cfg.split}: PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}"
        + (f"  LPIPS {m['lpips']:.4f}" if "lpips" in m else "  LPIPS skipped")
        + f"  {m['n_gaussians']} Gaussians  {m['render_s'] * 1000:.0f} ms/view -> {out / 'metrics.json'}"
    )
    return m


def orbit_cameras(center: Tensor, radius: float, height: float, n: int, up: Tensor | None = None) -> list[Tensor]:
    """``n`` camera-to-world matrices [4, 4] on a circle around ``center`` looking at it (OpenCV axes)."""
    up = torch.tensor([0.0, 0.0, 1.0]) if up is None else up
    out = []
    for i in range(n):
        a = 2 * math.pi * i / n
        pos = center + torch.tensor([radius * math.cos(a), radius * math.sin(a), height])
        fwd = F.normalize(center - pos, dim=0)
        right = F.normalize(torch.linalg.cross(fwd, up), dim=0)
        down = torch.linalg.cross(fwd, right)
        c2w = torch.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, pos
        out.append(c2w)
    return out


@torch.no_grad()
def run_render(cfg: RenderCommandConfig) -> dict:
    import imageio.v3 as iio

    device = select_device(cfg.device)
    params = load_gaussians(cfg.run_dir, cfg.ply, device)
    scene = _scene_for(cfg.run_dir, cfg.scene, cfg.factor)
    params = _into_scene_frame(params, cfg.ply, cfg.ply_frame, scene)
    out = Path(cfg.out or (Path(cfg.run_dir) / "render" if cfg.run_dir else "splat_render"))
    out.mkdir(parents=True, exist_ok=True)
    deg = sh_degree_of(params)
    bg = _run_background(cfg.run_dir, cfg.background, device)
    settings = _run_settings(cfg.run_dir)
    ref = scene.train[0] if scene.train else scene.test[0]
    if cfg.mode == "views":
        paths = []
        for v in scene.test or scene.train:
            img, _, _ = render_view(params, v, deg, device, settings, background=bg)
            p = out / f"{Path(v.name).stem}.png"
            iio.imwrite(p, (img.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype("uint8"))
            paths.append(str(p))
        return {"images": paths}
    views = scene.train + scene.test
    centers = torch.stack([v.camtoworld[:3, 3] for v in views])
    radius = float(centers[:, :2].norm(dim=-1).mean())
    height = float(centers[:, 2].mean())
    frames = []
    for c2w in orbit_cameras(torch.zeros(3), radius, height, cfg.frames):
        v = View(name="orbit", image_path=ref.image_path, K=ref.K, camtoworld=c2w, width=ref.width, height=ref.height)
        img, _, _ = render_view(params, v, deg, device, settings, background=bg)
        frames.append((img.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype("uint8"))
    path = out / "turntable.gif"
    iio.imwrite(path, frames, duration=1000 / cfg.fps, loop=0)
    iio.imwrite(out / "turntable_first.png", frames[0])
    print(f"wrote {len(frames)} frames -> {path}")
    return {"video": str(path), "first_frame": str(out / "turntable_first.png")}


def _into_scene_frame(params: dict[str, Tensor], ply: str, frame: str, scene: Scene) -> dict[str, Tensor]:
    """A PLY in the capture's COLMAP frame moved into the scene's normalized world (checkpoints already are)."""
    return transform_gaussians(params, scene.transform) if ply and frame == "colmap" else params


def run_transform(run_dir: str | Path) -> Tensor:
    """The normalization [4, 4] (COLMAP -> normalized, float64) of a training run: from its scene.json, or, for
    a run that has none, by loading its scene again."""
    saved = Path(run_dir) / "scene.json"
    if saved.exists():
        norm = json.loads(saved.read_text()).get("normalization")
        t = torch.eye(4, dtype=torch.float64)
        if norm is not None:
            t[:3, :3] = norm["scale"] * torch.tensor(norm["rotation"], dtype=torch.float64)
            t[:3, 3] = torch.tensor(norm["translation"], dtype=torch.float64)
        return t
    return _scene_for(str(run_dir), "", 0, check_images=False).transform


def run_export(cfg: ExportCommandConfig) -> dict:
    params = load_gaussians(cfg.run_dir, "", "cpu")
    path = Path(cfg.out or Path(cfg.run_dir) / "point_cloud.ply")
    info = save_ply(params, path, transform=run_transform(cfg.run_dir) if cfg.frame == "colmap" else None)
    msg = f"wrote {info['written']} Gaussians ({cfg.frame} frame) -> {path}"
    if info["dropped_nonfinite"]:
        msg += f" ({info['dropped_nonfinite']} with NaN/Inf attributes dropped)"
    print(msg)
    return {"ply": str(path), **info}
