"""3DGS training on the figurine scene (data factor 8, ADC) on CPU: wall-clock, held-out PSNR/SSIM, #Gaussians.

Runs ``genai-train splat train`` (the same ``splatting.train.train`` call) on ../shared/data/scenes/figurine
with every 8th image held out, then records the training time (evaluation excluded), the test metrics and
the final number of Gaussians.

Run: python benchmarks/splat_train.py [--quick] [--steps N] [--threads T]
(claims: BENCHMARKS.md, `splat_train`: test_psnr_db >= 23, train_minutes <= 30)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("BUILD_NO_CUDA", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENES_DIR = ROOT.parent / "shared" / "data" / "scenes"
SCENE = SCENES_DIR / "figurine"


def shipped_scenes(spec: str = "") -> list[Path]:
    """The COLMAP scenes a benchmark runs on: ``spec`` is comma-separated scene names (folders of SCENES_DIR)
    or scene folders; empty = every scene in SCENES_DIR. Exits naming what is not a scene."""
    if not spec:
        scenes = sorted(p for p in SCENES_DIR.iterdir() if (p / "sparse").is_dir()) if SCENES_DIR.is_dir() else []
        if not scenes:
            sys.exit(f"no COLMAP scene in {SCENES_DIR}: these benchmarks need the scenes from ../shared/data")
        return scenes
    scenes = [Path(s) if Path(s).is_dir() else SCENES_DIR / s for s in spec.split(",") if s]
    bad = [str(s) for s in scenes if not (s / "sparse").is_dir()]
    if bad:
        sys.exit(f"not a COLMAP scene (no sparse/): {bad}; pass scene folders or names of folders in {SCENES_DIR}")
    return [s.resolve() for s in scenes]


def overrides(steps: int, run_dir: str, threads: int) -> list[str]:
    """The benchmark's schedule: gsplat's defaults compressed to ``steps`` (densify over the first half), plus
    what the figurine's sparse views need: the SfM points cover only the figurine, so 50k random points fill
    the cube of half-side 4 x scene scale where training cameras look (coloured by their pixels), SH degree 1,
    and a random background colour each step (semi-transparent Gaussians cannot hide in a black background)."""
    refine_start, refine_stop = min(300, steps // 10), steps // 2
    return [
        f"--data.root={SCENE}",
        "--data.factor=8",
        f"--run.dir={run_dir}",
        f"--train.steps={steps}",
        f"--run.threads={threads}",
        "--run.log_every=100",
        "--ckpt.every=0",
        "--render.tile_size=8",
        f"--sh_degree_interval={max(1, steps // 10)}",
        f"--strategy.refine_start={refine_start}",
        f"--strategy.refine_stop={refine_stop}",
        "--strategy.refine_every=100",
        f"--strategy.reset_every={max(refine_stop // 2, refine_start + 1)}",
        "--eval.save_images=true",
        "--init_random=50000",
        "--init_extent=4",
        "--init_views=1",
        "--init_color=image",
        "--sh_degree=1",
        "--render.background=random",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 500-step smoke run (a few minutes)")
    ap.add_argument("--steps", type=int, default=0, help="override the number of steps (default 1500, quick 500)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    ap.add_argument("--run-dir", default="", help="keep the run here (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()

    from genai_train.bench import claim, write_result
    from genai_train.config import config_to_dict, load_config
    from splatting.config import TrainConfig
    from splatting.train import train

    steps = args.steps or (500 if args.quick else 1500)
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="splat_train_bench_")
    cfg = load_config(TrainConfig, None, overrides(steps, run_dir, args.threads))
    result = train(cfg)
    m = result["test"]
    minutes = result["train_seconds"] / 60
    claims = [claim("test_psnr_db", m["psnr"], ">=", 23.0), claim("train_minutes", minutes, "<=", 30.0)]
    data = {
        "test_psnr_db": m["psnr"],
        "test_ssim": m["ssim"],
        "test_lpips": m.get("lpips"),
        "lpips_skipped": m.get("lpips_skipped"),
        "n_gaussians": m["n_gaussians"],
        "train_minutes": minutes,
        "render_s_per_view": m["render_s"],
        "per_view": m["views"],
        "run_dir": run_dir,
        "skipped_steps": result["skipped_steps"],
    }
    config = {
        "scene": "figurine",
        "data_factor": 8,
        "strategy": "adc",
        "steps": steps,
        "threads": args.threads,
        "train_config": config_to_dict(cfg),
    }
    path = write_result("splat_train", config, claims, data, quick=args.quick, out_dir=args.out)
    print(json.dumps({"claims": claims, "n_gaussians": m["n_gaussians"], "ssim": m["ssim"]}, indent=2))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
