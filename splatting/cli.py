"""``genai-train splat <verb>``: train, eval, render, export, view; and the splatting part of ``genai-train demo``."""

from __future__ import annotations

import json
from pathlib import Path

from genai_train.commands import Command
from splatting.config import (
    EvalCommandConfig,
    ExportCommandConfig,
    RenderCommandConfig,
    TrainConfig,
    ViewCommandConfig,
)
from splatting.evaluate import run_eval, run_export, run_render
from splatting.train import train
from splatting.view import run_view

__all__ = ["COMMANDS", "demo"]


def _train(cfg: TrainConfig) -> dict:
    result = train(cfg)
    if "test" in result:
        m = result["test"]
        print(
            f"test PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, {m['n_gaussians']} Gaussians, "
            f"{result['train_seconds'] / 60:.1f} min -> {cfg.run.dir}"
        )
    return result


COMMANDS: dict[str, Command] = {
    "train": Command(
        help="train 3D Gaussians on a COLMAP scene (--strategy adc|steepgs densification; checkpoints resume exactly)",
        run=_train,
        config=TrainConfig,
        shortcuts={
            "scene": "data.root",
            "data_factor": "data.factor",
            "steps": "train.steps",
            "out": "run.dir",
            "strategy": "strategy.name",
        },
        example="genai-train splat train --scene ../shared/data/scenes/figurine --data-factor 8 --strategy steepgs",
    ),
    "eval": Command(
        help="PSNR / SSIM / LPIPS (if its weights are local), Gaussian count and render time on held-out views",
        run=run_eval,
        config=EvalCommandConfig,
        shortcuts={"run": "run_dir"},
        example="genai-train splat eval --run_dir runs/splat",
    ),
    "render": Command(
        help="render a turntable (GIF) or the test views of a trained run or a PLY",
        run=run_render,
        config=RenderCommandConfig,
        shortcuts={"run": "run_dir"},
        example="genai-train splat render --run_dir runs/splat --frames 60",
    ),
    "export": Command(
        help="write the newest checkpoint as an INRIA-layout PLY (viewers read it)",
        run=run_export,
        config=ExportCommandConfig,
        shortcuts={"run": "run_dir"},
        example="genai-train splat export --run_dir runs/splat --out scene.ply",
    ),
    "view": Command(
        help="browser viewer (viser) of a run's newest checkpoint or a PLY, training cameras as frustums",
        run=run_view,
        config=ViewCommandConfig,
        example="genai-train splat view --run runs/splat --port 8080",
    ),
}


def demo(out_dir: Path) -> dict[str, str]:
    """Generate a small scene, write it in COLMAP format, train on it for a few minutes on CPU, evaluate,
    export a PLY and a turntable."""
    import imageio.v3 as iio

    from genai_train.config import load_config
    from splatting.synthetic import write_colmap_scene

    out_dir = Path(out_dir)
    scene_dir = out_dir / "scene"
    if not (scene_dir / "sparse" / "0").exists():
        write_colmap_scene(scene_dir, n_views=24, width=96, height=72, n_gaussians=600, n_points=250)
    run_dir = out_dir / "run"
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"--data.root={scene_dir}",
            "--data.factor=1",
            f"--run.dir={run_dir}",
            "--train.steps=900",
            "--sh_degree=1",
            "--sh_degree_interval=300",
            "--strategy.refine_start=150",
            "--strategy.refine_stop=600",
            "--strategy.refine_every=75",
            "--strategy.reset_every=450",
            "--strategy.max_gaussians=3000",
            "--ckpt.every=500",
            "--run.log_every=100",
            "--render.background=white",
            "--render.tile_size=8",
            "--optim.means_final_ratio=0.1",
            "--run.threads=1",
        ],
    )
    result = train(cfg)
    m = result["test"]
    render = run_render(RenderCommandConfig(run_dir=str(run_dir), frames=36, fps=12, device="cpu"))
    first = sorted((run_dir / "test_renders").glob("*.png"))
    summary = {
        "test_psnr_db": m["psnr"],
        "test_ssim": m["ssim"],
        "n_gaussians": m["n_gaussians"],
        "train_seconds": result["train_seconds"],
        "steps": cfg.train.steps,
    }
    (out_dir / "splat_metrics.json").write_text(json.dumps(summary, indent=2))
    if first:
        iio.imwrite(out_dir / "splat_test_view.png", iio.imread(first[0]))
    return {
        "metrics": str(out_dir / "splat_metrics.json"),
        "ply": result["ply"],
        "turntable": render["video"],
        "test view (render | ground truth)": str(out_dir / "splat_test_view.png"),
    }
