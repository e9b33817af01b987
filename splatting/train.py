"""3D Gaussian Splatting training, evaluation, rendering and export.

3D Gaussian Splatting for Real-Time Radiance Field Rendering, https://arxiv.org/abs/2308.04079, with the
optimization setup of gsplat's ``simple_trainer.py``: one view per step, loss (1 - lambda) L1 +
lambda (1 - SSIM) with lambda = 0.2, one Adam per attribute (means LR decays exponentially to 1% over the
run, scaled by the scene size), SH degree raised by one every ``sh_degree_interval`` steps, and a
densification strategy object driven by ``step_pre_backward`` / ``step_post_backward``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from genai_train.checkpoint import CheckpointConfig, Checkpointer, prepare_run_dir
from genai_train.config import config_to_dict, save_config
from genai_train.device import select_device
from genai_train.engine import check_resume_config
from genai_train.logging import RunLogger
from genai_train.seed import rng_state, seed_everything, set_rng_state
from splatting.colmap import Scene, View, load_scene
from splatting.gaussians import PARAM_KEYS, empty_gaussians, init_gaussians
from splatting.metrics import LPIPSUnavailable, lpips_metric, psnr, ssim
from splatting.ply import load_ply, save_ply
from splatting.render import RasterSettings, render
from splatting.render.torch_raster import DEFAULT_SETTINGS
from splatting.strategies import DensifyConfig

__all__ = [
    "DataConfig",
    "RenderConfig",
    "LRConfig",
    "RunSection",
    "EvalConfig",
    "TrainConfig",
    "train",
    "make_optimizers",
    "render_view",
    "evaluate",
    "load_gaussians",
    "EvalCommandConfig",
    "RenderCommandConfig",
    "ExportCommandConfig",
    "run_eval",
    "run_render",
    "run_export",
]


@dataclass
class DataConfig:
    root: str = field(default="", metadata={"help": "COLMAP scene folder (with images/ and sparse/)"})
    factor: int = field(default=4, metadata={"help": "downscale images by this factor (resized copies are cached)"})
    test_every: int = field(default=8, metadata={"help": "hold out every N-th image (sorted by name) for testing"})
    normalize: bool = field(default=True, metadata={"help": "normalize the world like gsplat's COLMAP parser"})
    image_dir: str = field(default="images", metadata={"help": "image folder inside the scene folder"})
    cache_dir: str = field(default="", metadata={"help": "where resized images go (default ~/.cache/genai-train)"})

    def __post_init__(self):
        if self.factor < 1:
            raise ValueError(f"data.factor must be >= 1, got {self.factor}")
        if self.test_every < 0:
            raise ValueError(f"data.test_every must be >= 0 (0: no test split), got {self.test_every}")


@dataclass
class RenderConfig:
    backend: Literal["auto", "torch", "gsplat"] = field(
        default="auto", metadata={"help": "auto: gsplat CUDA on a GPU when installed, else our PyTorch rasterizer"}
    )
    tile_size: int = field(default=8, metadata={"help": "tile size in pixels (the image does not depend on it)"})
    chunk_elems: int = field(default=1 << 22, metadata={"help": "fragments per compositing chunk (bounds memory)"})
    store_elems: int = field(
        default=1 << 26,
        metadata={
            "help": "forward fragment values (4 bytes each) kept per render for the backward, which recomputes the "
            "rest; 0 recomputes all (least memory, slower)"
        },
    )
    background: Literal["black", "white", "random"] = field(
        default="black", metadata={"help": "background colour behind the Gaussians while training"}
    )

    def __post_init__(self):
        if self.tile_size < 1 or self.chunk_elems < 1 or self.store_elems < 0:
            raise ValueError("render.tile_size and render.chunk_elems must be >= 1, render.store_elems >= 0")

    def settings(self) -> RasterSettings:
        return RasterSettings(tile_size=self.tile_size, chunk_elems=self.chunk_elems, store_elems=self.store_elems)


@dataclass
class LRConfig:
    means: float = field(default=1.6e-4, metadata={"help": "means LR (x scene scale), decays to means_final_ratio"})
    means_final_ratio: float = field(default=0.01, metadata={"help": "means LR at the last step / initial"})
    scales: float = field(default=5e-3, metadata={"help": "log-scale LR"})
    quats: float = field(default=1e-3, metadata={"help": "quaternion LR"})
    opacities: float = field(default=5e-2, metadata={"help": "logit-opacity LR"})
    sh0: float = field(default=2.5e-3, metadata={"help": "SH degree-0 LR"})
    shN: float = field(default=2.5e-3 / 20, metadata={"help": "higher-order SH LR"})

    def __post_init__(self):
        for k in ("means", "scales", "quats", "opacities", "sh0", "shN"):
            if getattr(self, k) < 0:
                raise ValueError(f"lr.{k} must be >= 0, got {getattr(self, k)}")
        if not 0 < self.means_final_ratio <= 1:
            raise ValueError(f"lr.means_final_ratio must be in (0, 1], got {self.means_final_ratio}")


@dataclass
class RunSection:
    dir: str = field(default="runs/splat", metadata={"help": "run folder (config, checkpoints, metrics, outputs)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps"})
    seed: int = field(default=42, metadata={"help": "random seed"})
    log_every: int = field(default=100, metadata={"help": "log scalars every N steps"})
    threads: int = field(
        default=0, metadata={"help": "CPU threads for PyTorch (0: its default; 1 is fastest on a busy machine)"}
    )

    def __post_init__(self):
        if self.log_every < 1:
            raise ValueError(f"run.log_every must be >= 1, got {self.log_every}")
        if self.threads < 0:
            raise ValueError(f"run.threads must be >= 0, got {self.threads}")


@dataclass
class EvalConfig:
    every: int = field(default=0, metadata={"help": "evaluate on the test views every N steps (0: only at the end)"})
    lpips_net: Literal["alex", "vgg"] = field(default="alex", metadata={"help": "LPIPS backbone"})
    lpips_weights: str = field(default="", metadata={"help": "local backbone weights file (else torch hub cache)"})
    save_images: bool = field(default=True, metadata={"help": "write rendered test views as PNG"})


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    run: RunSection = field(default_factory=RunSection)
    steps: int = field(default=30_000, metadata={"help": "optimizer steps (one view each)"})
    sh_degree: int = field(default=3, metadata={"help": "final SH degree (0..3)"})
    sh_degree_interval: int = field(default=1000, metadata={"help": "raise the SH degree by one every N steps"})
    init_opacity: float = field(default=0.1, metadata={"help": "initial opacity of every Gaussian"})
    init_scale: float = field(default=1.0, metadata={"help": "initial scale = this x mean 3-NN distance"})
    init_random: int = field(
        default=0,
        metadata={
            "help": "add this many random points (uniform in a cube of half-side init_extent x scene scale; see "
            "init_views, init_color) to the SfM points: starts Gaussians where SfM found none, e.g. walls"
        },
    )
    init_extent: float = field(default=3.0, metadata={"help": "half-side of the random-init cube / scene scale"})
    init_views: int = field(
        default=1,
        metadata={
            "help": "keep a random point only if at least this many training cameras see it (0: keep all); a point "
            "no training view sees never gets a gradient and shows up in test views as a stray blob"
        },
    )
    init_color: Literal["image", "random"] = field(
        default="image",
        metadata={"help": "colour of random points: image = mean of the training pixels they project to, or random"},
    )
    ssim_lambda: float = field(default=0.2, metadata={"help": "weight of the D-SSIM term in the loss"})
    opacity_reg: float = field(
        default=0.0,
        metadata={
            "help": "add this x the mean opacity to the loss (as gsplat's --opacity_reg; favours fewer, "
            "solid Gaussians)"
        },
    )
    scale_reg: float = field(
        default=0.0,
        metadata={
            "help": "add this x the mean of the Gaussians' scales (exp of log-scales) to the loss "
            "(gsplat's --scale_reg)"
        },
    )
    lr: LRConfig = field(default_factory=LRConfig)
    strategy: DensifyConfig = field(default_factory=DensifyConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export_ply: bool = field(default=True, metadata={"help": "write point_cloud.ply at the end"})

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {self.sh_degree}")
        if self.sh_degree_interval < 1:
            raise ValueError(f"sh_degree_interval must be >= 1, got {self.sh_degree_interval}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"init_opacity must be in (0, 1), got {self.init_opacity}")
        if self.init_random < 0 or not self.init_extent > 0:
            raise ValueError(
                f"init_random must be >= 0 and init_extent > 0, got {self.init_random} and {self.init_extent}"
            )
        if self.init_views < 0:
            raise ValueError(f"init_views must be >= 0, got {self.init_views}")
        if not 0 <= self.ssim_lambda <= 1:
            raise ValueError(f"ssim_lambda must be in [0, 1], got {self.ssim_lambda}")
        if self.opacity_reg < 0 or self.scale_reg < 0:
            raise ValueError(f"opacity_reg and scale_reg must be >= 0, got {self.opacity_reg} and {self.scale_reg}")


# --------------------------------------------------------------------------------------------------------
# pieces


def seen_by(
    points: Tensor, views, images: list[Tensor] | None = None, near: float = 1e-2
) -> tuple[Tensor, Tensor | None]:
    """How many of ``views`` see each point (in front of the camera by more than ``near``, projecting inside
    the image) and, with ``images`` ([H, W, 3] per view), the mean colour of the pixels it lands on (zero
    where no view sees it). points [N, 3] -> counts [N] (int), colours [N, 3] or None."""
    counts = torch.zeros(len(points), dtype=torch.long)
    csum = torch.zeros(len(points), 3) if images is not None else None
    for i, v in enumerate(views):
        w2c = v.viewmat.to(points)
        pc = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[:, 2]
        uv = pc[:, :2] / z.clamp_min(near)[:, None] * v.K[[0, 1], [0, 1]].to(points) + v.K[:2, 2].to(points)
        ok = (z > near) & (uv[:, 0] >= 0) & (uv[:, 0] < v.width) & (uv[:, 1] >= 0) & (uv[:, 1] < v.height)
        counts += ok.long()
        if images is not None:
            px = uv[ok].long()
            csum[ok] += images[i][px[:, 1], px[:, 0]].to(csum)
    colors = csum / counts.clamp_min(1)[:, None].to(csum) if csum is not None else None
    return counts, colors


def initial_points(scene, cfg: TrainConfig, generator: torch.Generator, log=None) -> tuple[Tensor, Tensor]:
    """The SfM points and colours, plus ``cfg.init_random`` random ones (gsplat's random init): uniform in the
    cube [-e, e]^3, e = init_extent x scene scale, kept where at least ``init_views`` training cameras see
    them (drawn until there are enough), coloured by the training pixels they project to or at random."""
    points, colors = scene.points, scene.point_colors
    if not cfg.init_random:
        return points, colors
    half = cfg.init_extent * scene.scene_scale
    want, kept, drawn = cfg.init_random, [], 0
    while sum(len(k) for k in kept) < want and drawn < 100 * want:
        cand = (torch.rand(want, 3, generator=generator) * 2 - 1) * half
        drawn += want
        if cfg.init_views:
            cand = cand[seen_by(cand, scene.train)[0] >= cfg.init_views]
        kept.append(cand)
    extra = torch.cat(kept)[:want]
    if len(extra) < want and log is not None:
        log.info(
            f"init_random: only {len(extra)} of {want} random points are seen by >= {cfg.init_views} "
            f"training views within the cube of half-side {cfg.init_extent} x scene scale"
        )
    if cfg.init_color == "image":
        extra_colors = seen_by(extra, scene.train, [scene.image(v) for v in scene.train])[1]
    else:
        extra_colors = torch.rand(len(extra), 3, generator=generator)
    return torch.cat([points, extra]), torch.cat([colors, extra_colors])


def make_optimizers(
    params: torch.nn.ParameterDict, lr: LRConfig, scene_scale: float
) -> dict[str, torch.optim.Optimizer]:
    """One Adam per attribute with gsplat's learning rates (eps 1e-15 as in the reference code)."""
    rates = {
        "means": lr.means * scene_scale,
        "scales": lr.scales,
        "quats": lr.quats,
        "opacities": lr.opacities,
        "sh0": lr.sh0,
        "shN": lr.shN,
    }
    return {k: torch.optim.Adam([{"params": [params[k]], "lr": rates[k], "name": k}], eps=1e-15) for k in params.keys()}


def means_lr(lr: LRConfig, scene_scale: float, step: int, total: int) -> float:
    """Exponential decay lr0 * ratio^(step / total) (gsplat's ExponentialLR, gamma = ratio^(1/total))."""
    return lr.means * scene_scale * lr.means_final_ratio ** (step / total)


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


def training_loss(img: Tensor, gt: Tensor, params: dict[str, Tensor], cfg: TrainConfig) -> tuple[Tensor, Tensor]:
    """(loss, L1): (1 - l) L1 + l (1 - SSIM), plus the optional opacity and scale regularizers."""
    l1 = (img - gt).abs().mean()
    loss = (1 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1 - ssim(img, gt, padding="valid"))
    if cfg.opacity_reg:
        loss = loss + cfg.opacity_reg * torch.sigmoid(params["opacities"]).mean()
    if cfg.scale_reg:
        loss = loss + cfg.scale_reg * torch.exp(params["scales"]).mean()
    return loss, l1


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


def _eval_background(kind: str, device) -> Tensor | None:
    """Test views are rendered on white when training used white, else on black (gsplat's convention)."""
    return torch.ones(3, device=device) if kind == "white" else None


def _background(kind: str, device, gen: torch.Generator) -> Tensor | None:
    if kind == "black":
        return None
    if kind == "white":
        return torch.ones(3, device=device)
    return torch.rand(3, generator=gen).to(device)


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


def _checkpoint_state(step, params, optimizers, strategy_state, sampler, cfg) -> dict:
    return {
        "step": step,
        "params": {k: params[k].detach().clone() for k in params.keys()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "strategy": dict(strategy_state),
        "rng": rng_state(),
        "sampler": sampler.get_state(),
        "config": config_to_dict(cfg),
    }


def _restore(state: dict, device) -> tuple[torch.nn.ParameterDict, dict]:
    p = state["params"]
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(p[k].to(device)) for k in PARAM_KEYS})
    return params, {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in state["strategy"].items()}


# --------------------------------------------------------------------------------------------------------
# training


def train(cfg: TrainConfig, scene: Scene | None = None, stop_after: int | None = None) -> dict:
    """Train on ``cfg.data.root`` (or a preloaded ``scene``); returns the final metrics.

    ``stop_after`` ends the run after that many steps, as an interruption would (tests use it).
    """
    device = select_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    run_dir = prepare_run_dir(cfg.run.dir, "splat", cfg.ckpt.resume)
    save_config(cfg, run_dir)
    log = RunLogger(run_dir, tensorboard=False)
    seed_everything(cfg.run.seed)
    if scene is None:
        if not cfg.data.root:
            raise ValueError("no scene given: pass --scene DIR (a COLMAP folder with images/ and sparse/)")
        scene = load_scene(
            cfg.data.root,
            cfg.data.factor,
            cfg.data.test_every,
            cfg.data.normalize,
            cfg.data.image_dir,
            cfg.data.cache_dir or None,
        )
    if not scene.train:
        raise ValueError(
            f"{scene.root}: no training views left after holding out every "
            f"{cfg.data.test_every}-th image; lower data.test_every or set it to 0"
        )
    gts = {v.name: scene.image(v).to(device) for v in scene.train}
    scene_scale = scene.scene_scale * 1.1
    settings = cfg.render.settings()
    backend = cfg.render.backend
    strategy = cfg.strategy.build()
    sampler = torch.Generator().manual_seed(cfg.run.seed)

    ckpt = Checkpointer(run_dir / "ckpt", keep=cfg.ckpt.keep, task="splat")
    latest = ckpt.load_latest(map_location=device) if cfg.ckpt.resume == "auto" else None
    if latest is not None:
        start, st = latest
        if "config" in st:  # sh_degree fixes the shape of shN; the scene fixes which views exist
            check_resume_config(st["config"], config_to_dict(cfg), shape_keys=["sh_degree", "data.root"])
        params, sstate = _restore(st, device)
        optimizers = make_optimizers(params, cfg.lr, scene_scale)
        for k, o in optimizers.items():
            o.load_state_dict(st["optimizers"][k])
        set_rng_state(st["rng"])
        sampler.set_state(st["sampler"])
        log.info(f"resumed from step {start} ({len(params['means'])} Gaussians)")
    else:
        start = 0
        init_gen = torch.Generator().manual_seed(cfg.run.seed)
        points, colors = initial_points(scene, cfg, init_gen, log)
        params = init_gaussians(points, colors, cfg.sh_degree, cfg.init_opacity, cfg.init_scale, generator=init_gen).to(
            device
        )
        optimizers = make_optimizers(params, cfg.lr, scene_scale)
        sstate = strategy.initialize_state(scene_scale)
    strategy.check_sanity(params, optimizers)
    n_param_bytes = sum(p.numel() * p.element_size() for p in params.values())
    log.info(
        f"{len(scene.train)} train / {len(scene.test)} test views at {scene.train[0].width}x"
        f"{scene.train[0].height}, {len(params['means'])} Gaussians, device {device}, params "
        f"{n_param_bytes / 2**20:.1f} MiB (+ 2x for Adam state)"
    )

    t_start = time.perf_counter()
    skipped, last_loss = 0, float("nan")
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = log.progress(cfg.steps, initial=start, desc="splat")
    step = start
    for step in range(start, end):
        for g in optimizers["means"].param_groups:
            g["lr"] = means_lr(cfg.lr, scene_scale, step, cfg.steps)
        view = scene.train[int(torch.randint(len(scene.train), (1,), generator=sampler))]
        bg = _background(cfg.render.background, device, sampler)
        sh_deg = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        img, _, info = render_view(params, view, sh_deg, device, settings, backend, bg)
        loss, l1 = training_loss(img, gts[view.name], params, cfg)
        strategy.step_pre_backward(params, optimizers, sstate, step, info)
        loss.backward()
        if not (torch.isfinite(loss) and _all_finite(p.grad for p in params.values())):
            skipped += 1
            log.info(f"step {step}: non-finite loss or gradient; step skipped ({skipped} so far)")
            for o in optimizers.values():
                o.zero_grad(set_to_none=True)
            bar.update(1)
            continue
        for o in optimizers.values():
            o.step()
            o.zero_grad(set_to_none=True)
        events = strategy.step_post_backward(params, optimizers, sstate, step, info)
        if events.get("opacity_reset"):
            log.info(f"step {step}: opacities reset to {2 * strategy.prune_opa}")
        bar.update(1)
        if step % cfg.run.log_every == 0 or step == end - 1:
            last_loss = float(loss.detach())
            log.log(
                step,
                loss=last_loss,
                l1=float(l1.detach()),
                n_gaussians=len(params["means"]),
                sh_degree=sh_deg,
                skipped=skipped,
                **{k: v for k, v in events.items() if isinstance(v, (int, float))},
            )
        done = step + 1
        if (cfg.ckpt.every and done % cfg.ckpt.every == 0) or done == cfg.steps:
            _save_checkpoint(ckpt, done, params, optimizers, sstate, sampler, cfg, log)
        if cfg.eval.every and done % cfg.eval.every == 0 and done != cfg.steps and scene.test:
            m = evaluate(
                params,
                scene,
                scene.test,
                cfg.sh_degree,
                device,
                settings,
                backend,
                background=_eval_background(cfg.render.background, device),
            )
            log.log(done, test_psnr=m["psnr"], test_ssim=m["ssim"])
    bar.close()
    train_s = time.perf_counter() - t_start
    result = {
        "steps_done": end,
        "train_seconds": train_s,
        "skipped_steps": skipped,
        "last_loss": last_loss,
        "n_gaussians": int(len(params["means"])),
    }
    if end < cfg.steps:  # interrupted on purpose
        _save_checkpoint(ckpt, end, params, optimizers, sstate, sampler, cfg, log)
        log.close()
        return result
    if scene.test:
        m = evaluate(
            params,
            scene,
            scene.test,
            cfg.sh_degree,
            device,
            settings,
            backend,
            run_dir / "test_renders" if cfg.eval.save_images else None,
            cfg.eval.lpips_net,
            cfg.eval.lpips_weights,
            log=log.info,
            background=_eval_background(cfg.render.background, device),
        )
        result["test"] = m
        log.log(end, test_psnr=m["psnr"], test_ssim=m["ssim"], n_gaussians=m["n_gaussians"])
        log.info(
            f"test: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}"
            + (f", LPIPS {m['lpips']:.4f}" if "lpips" in m else "")
            + f", {m['n_gaussians']} Gaussians"
        )
    if cfg.export_ply:
        result["ply"] = str(run_dir / "point_cloud.ply")
        info = save_ply(params, run_dir / "point_cloud.ply")
        if info["dropped_nonfinite"]:
            log.info(f"PLY export dropped {info['dropped_nonfinite']} Gaussians with NaN/Inf attributes")
    (run_dir / "results.json").write_text(json.dumps(result, indent=2))
    log.close()
    return result


def _save_checkpoint(ckpt: Checkpointer, step: int, params, optimizers, sstate, sampler, cfg, log) -> None:
    if not _all_finite(params.values()):
        log.info(f"step {step}: parameters hold NaN/Inf; checkpoint NOT saved (the last good one is kept)")
        return
    ckpt.save(step, _checkpoint_state(step, params, optimizers, sstate, sampler, cfg))


# --------------------------------------------------------------------------------------------------------
# eval / render / export commands


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
            f"(genai-train splat train --scene DIR --out {run_dir}) or pass --ply FILE"
        )
    return {k: v.to(device) for k, v in latest[1]["params"].items()}


def _sh_degree_of(params: dict[str, Tensor]) -> int:
    return int(math.isqrt(params["shN"].shape[1] + 1)) - 1


def _saved_config(run_dir: str) -> dict:
    if run_dir and (Path(run_dir) / "config.yaml").exists():
        import yaml

        return yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    return {}


def _run_background(run_dir: str, choice: str, device) -> Tensor | None:
    kind = _saved_config(run_dir).get("render", {}).get("background", "black") if choice == "auto" else choice
    return _eval_background(kind, device)


def _scene_for(run_dir: str, scene: str, factor: int) -> Scene:
    saved = _saved_config(run_dir).get("data", {})
    root = scene or saved.get("root", "")
    if not root:
        raise ValueError("no scene: pass --scene DIR (or --run.dir of a run that recorded one)")
    return load_scene(
        root,
        factor or saved.get("factor", 4),
        saved.get("test_every", 8),
        saved.get("normalize", True),
        saved.get("image_dir", "images"),
        saved.get("cache_dir") or None,
    )


@dataclass
class EvalCommandConfig:
    background: Literal["auto", "black", "white"] = field(
        default="auto", metadata={"help": "background colour (auto: the one the run trained with)"}
    )
    run_dir: str = field(default="", metadata={"help": "training run folder (newest checkpoint is used)"})
    ply: str = field(default="", metadata={"help": "evaluate this PLY instead of a checkpoint"})
    scene: str = field(default="", metadata={"help": "scene folder (default: the one the run trained on)"})
    factor: int = field(default=0, metadata={"help": "data factor (0: the run's)"})
    split: Literal["test", "train"] = field(default="test", metadata={"help": "which views to evaluate"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps"})
    backend: Literal["auto", "torch", "gsplat"] = field(default="auto", metadata={"help": "renderer"})
    lpips_net: Literal["alex", "vgg"] = field(default="alex", metadata={"help": "LPIPS backbone"})
    lpips_weights: str = field(default="", metadata={"help": "local LPIPS backbone weights"})
    out: str = field(default="", metadata={"help": "write metrics JSON + renders here (default: run_dir/eval)"})


def run_eval(cfg: EvalCommandConfig) -> dict:
    device = select_device(cfg.device)
    params = load_gaussians(cfg.run_dir, cfg.ply, device)
    scene = _scene_for(cfg.run_dir, cfg.scene, cfg.factor)
    views = scene.test if cfg.split == "test" else scene.train
    out = Path(cfg.out or (Path(cfg.run_dir) / "eval" if cfg.run_dir else "splat_eval"))
    m = evaluate(
        params,
        scene,
        views,
        _sh_degree_of(params),
        device,
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


@dataclass
class RenderCommandConfig:
    background: Literal["auto", "black", "white"] = field(
        default="auto", metadata={"help": "background colour (auto: the one the run trained with)"}
    )
    run_dir: str = field(default="", metadata={"help": "training run folder"})
    ply: str = field(default="", metadata={"help": "render this PLY instead of a checkpoint"})
    scene: str = field(default="", metadata={"help": "scene folder (for camera intrinsics and path)"})
    factor: int = field(default=0, metadata={"help": "data factor (0: the run's)"})
    mode: Literal["turntable", "views"] = field(default="turntable", metadata={"help": "orbit video or test views"})
    frames: int = field(default=60, metadata={"help": "turntable frames"})
    fps: int = field(default=20, metadata={"help": "turntable frames per second"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps"})
    out: str = field(default="", metadata={"help": "output folder (default: run_dir/render)"})


@torch.no_grad()
def run_render(cfg: RenderCommandConfig) -> dict:
    import imageio.v3 as iio

    device = select_device(cfg.device)
    params = load_gaussians(cfg.run_dir, cfg.ply, device)
    scene = _scene_for(cfg.run_dir, cfg.scene, cfg.factor)
    out = Path(cfg.out or (Path(cfg.run_dir) / "render" if cfg.run_dir else "splat_render"))
    out.mkdir(parents=True, exist_ok=True)
    deg = _sh_degree_of(params)
    bg = _run_background(cfg.run_dir, cfg.background, device)
    ref = scene.train[0] if scene.train else scene.test[0]
    if cfg.mode == "views":
        paths = []
        for v in scene.test or scene.train:
            img, _, _ = render_view(params, v, deg, device, background=bg)
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
        img, _, _ = render_view(params, v, deg, device, background=bg)
        frames.append((img.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype("uint8"))
    path = out / "turntable.gif"
    iio.imwrite(path, frames, duration=1000 / cfg.fps, loop=0)
    iio.imwrite(out / "turntable_first.png", frames[0])
    print(f"wrote {len(frames)} frames -> {path}")
    return {"video": str(path), "first_frame": str(out / "turntable_first.png")}


@dataclass
class ExportCommandConfig:
    run_dir: str = field(default="", metadata={"help": "training run folder (newest checkpoint is exported)"})
    out: str = field(default="", metadata={"help": "PLY path (default: run_dir/point_cloud.ply)"})


def run_export(cfg: ExportCommandConfig) -> dict:
    params = load_gaussians(cfg.run_dir, "", "cpu")
    path = Path(cfg.out or Path(cfg.run_dir) / "point_cloud.ply")
    info = save_ply(params, path)
    msg = f"wrote {info['written']} Gaussians -> {path}"
    if info["dropped_nonfinite"]:
        msg += f" ({info['dropped_nonfinite']} with NaN/Inf attributes dropped)"
    print(msg)
    return {"ply": str(path), **info}


__all__ += ["orbit_cameras", "empty_gaussians"]
