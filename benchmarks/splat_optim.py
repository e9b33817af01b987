"""Adam vs selective Adam vs Adam-mini for 3DGS on every shipped scene: optimizer-state bytes and held-out PSNR.

Every run uses the schedule of ``benchmarks/splat_train.py`` (same seed, steps, learning rates, ADC
densification, data factor 8) on one scene of ../shared/data/scenes, except the SH degree: 3 (the trainer's
and gsplat's default) instead of 1; only ``--optim.name`` differs between the runs of a scene. Each run
trains in its own process with its own thread budget (``--parallel`` of them at a time). Per scene and
optimizer it records the final Gaussians, held-out PSNR/SSIM, the optimizer-state bytes at the end, the
training minutes, the time per step and the time per step spent in the optimizers.

Adam-mini's state is F + 6 floats per Gaussian (F per-float first moments, one second moment for each of the
six attributes) against Adam's 2F, F = 14 + 3 ((d + 1)^2 - 1) floats per Gaussian at SH degree d: 0.55 at
degree 3 (F = 59), 0.63 at degree 1 (F = 23), whatever the scene; ``--sh-degree`` changes it.

Claims (BENCHMARKS.md, ``splat_optim``): ``state_bytes_vs_adam.adam_mini`` <= 0.6, the largest ratio over
the scenes of Adam-mini's optimizer-state bytes at the end to Adam's; ``psnr_drop_db.adam_mini`` <= 0.1,
Adam's held-out PSNR minus Adam-mini's, averaged over the scenes. Selective Adam's PSNR and step time are
reported beside them (``data.summary``).

Run: python benchmarks/splat_optim.py [--quick] [--steps N] [--threads T] [--parallel P] [--scenes a,b]
[--sh-degree D]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BUILD_NO_CUDA", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from splat_train import overrides, shipped_scenes  # noqa: E402  (the shared schedule)

OPTIMIZERS = ("adam", "selective_adam", "adam_mini")


def schedule(steps: int, run_dir: str, threads: int, sh_degree: int) -> list[str]:
    """splat_train.py's schedule without its scene and with SH degree ``sh_degree``."""
    drop = ("--data.root=", "--sh_degree=")
    return [a for a in overrides(steps, run_dir, threads) if not a.startswith(drop)] + [f"--sh_degree={sh_degree}"]


def worker(scene: str, optim: str, steps: int, run_dir: str, threads: int, sh_degree: int, out: str) -> None:
    from genai_train.config import load_config
    from splatting.config import TrainConfig
    from splatting.train import train

    overrides_ = schedule(steps, run_dir, threads, sh_degree) + [
        f"--data.root={scene}",
        f"--optim.name={optim}",
        "--eval.save_images=false",
        "--export_ply=false",
    ]
    result = train(load_config(TrainConfig, None, overrides_))
    m = result["test"]
    Path(out).write_text(
        json.dumps(
            {
                "scene": Path(scene).name,
                "optim": optim,
                "n_gaussians": m["n_gaussians"],
                "test_psnr_db": m["psnr"],
                "test_ssim": m["ssim"],
                "optimizer_state_bytes": result["optimizer_state_bytes"],
                "param_bytes": sum(v.numel() * v.element_size() for v in result["gaussians"].values()),
                "train_minutes": result["train_seconds"] / 60,
                "s_per_step": result["train_seconds"] / result["steps_done"],
                "optimizer_s_per_step": result["optimizer_seconds"] / result["steps_done"],
                "skipped_steps": result["skipped_steps"],
            }
        )
    )


def run_all(jobs: list[dict], parallel: int) -> None:
    """Run the worker commands, ``parallel`` at a time, in the order given; raise if one fails."""
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            print(f"start {job['scene']} / {job['optim']}", file=sys.stderr)
            running.append((job, subprocess.Popen(job["cmd"])))
        time.sleep(1)
        for job, proc in list(running):
            code = proc.poll()
            if code is None:
                continue
            running.remove((job, proc))
            if code != 0:
                for _, other in running:
                    other.terminate()
                raise SystemExit(f"{job['scene']} / {job['optim']} failed (exit {code}): {' '.join(job['cmd'])}")
            print(f"done {job['scene']} / {job['optim']}", file=sys.stderr)


def summarize(runs: dict[str, dict[str, dict]]) -> tuple[list[dict], dict]:
    from genai_train.bench import claim

    per_scene = {}
    for scene, r in runs.items():
        adam = r["adam"]
        per_scene[scene] = {
            name: {
                "state_bytes_vs_adam": r[name]["optimizer_state_bytes"] / adam["optimizer_state_bytes"],
                "psnr_drop_db": adam["test_psnr_db"] - r[name]["test_psnr_db"],
                "step_time_vs_adam": r[name]["s_per_step"] / adam["s_per_step"],
                "optimizer_step_time_vs_adam": r[name]["optimizer_s_per_step"] / adam["optimizer_s_per_step"],
            }
            for name in OPTIMIZERS
            if name != "adam"
        }
    mean = {
        name: {
            key: sum(s[name][key] for s in per_scene.values()) / len(per_scene)
            for key in ("state_bytes_vs_adam", "psnr_drop_db", "step_time_vs_adam", "optimizer_step_time_vs_adam")
        }
        for name in OPTIMIZERS
        if name != "adam"
    }
    worst_bytes = max(s["adam_mini"]["state_bytes_vs_adam"] for s in per_scene.values())
    claims = [
        claim("state_bytes_vs_adam.adam_mini", worst_bytes, "<=", 0.6),
        claim("psnr_drop_db.adam_mini", mean["adam_mini"]["psnr_drop_db"], "<=", 0.1),
    ]
    summary = {
        "per_scene": per_scene,
        "mean_over_scenes": mean,
        "state_bytes_vs_adam.adam_mini": "max over scenes",
        "psnr_drop_db.adam_mini": "mean over scenes",
    }
    return claims, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 50-step smoke run of every scene and optimizer")
    ap.add_argument("--steps", type=int, default=0, help="steps per run (default 1000, quick 50)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")), help="per run")
    ap.add_argument("--parallel", type=int, default=2, help="runs at a time, each in its own process")
    ap.add_argument("--sh-degree", type=int, default=3, help="final SH degree of every run (default 3)")
    ap.add_argument("--scenes", default="", help="scene names or folders, comma-separated (default: all)")
    ap.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--worker", nargs=2, metavar=("SCENE", "OPTIM"), help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    steps = args.steps or (50 if args.quick else 1000)
    if args.worker:
        worker(args.worker[0], args.worker[1], steps, args.run_dir, args.threads, args.sh_degree, args.out)
        return

    from genai_train.bench import write_result

    scenes = shipped_scenes(args.scenes)
    tmp = Path(tempfile.mkdtemp(prefix="splat_optim_bench_"))
    jobs = []
    for scene in scenes:
        for name in OPTIMIZERS:
            tag = f"{scene.name}_{name}"
            jobs.append(
                {
                    "scene": scene.name,
                    "optim": name,
                    "out": tmp / f"{tag}.json",
                    "cmd": [
                        sys.executable,
                        __file__,
                        "--worker",
                        str(scene),
                        name,
                        "--steps",
                        str(steps),
                        "--threads",
                        str(args.threads),
                        "--sh-degree",
                        str(args.sh_degree),
                        "--run-dir",
                        str(tmp / tag),
                        "--out",
                        str(tmp / f"{tag}.json"),
                    ],
                }
            )
    run_all(jobs, max(1, args.parallel))
    runs: dict[str, dict[str, dict]] = {}
    for job in jobs:
        runs.setdefault(job["scene"], {})[job["optim"]] = json.loads(Path(job["out"]).read_text())
    claims, summary = summarize(runs)
    floats = 14 + 3 * ((args.sh_degree + 1) ** 2 - 1)  # per Gaussian: means 3, scales 3, quats 4, opacity 1, SH
    summary["closed_form_state_bytes_vs_adam.adam_mini"] = (floats + 6) / (2 * floats)
    config = {
        "scenes": [f"../shared/data/scenes/{p.name}" for p in scenes],
        "optimizers": list(OPTIMIZERS),
        "data_factor": 8,
        "strategy": "adc",
        "steps": steps,
        "threads_per_run": args.threads,
        "parallel_runs": args.parallel,
        "sh_degree": args.sh_degree,
        "schedule": schedule(steps, "<run_dir>", args.threads, args.sh_degree),
    }
    path = write_result("splat_optim", config, claims, {"runs": runs, "summary": summary}, args.quick, args.out_dir)
    print(json.dumps({"claims": claims, "mean_over_scenes": summary["mean_over_scenes"]}, indent=2))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
