"""ADC vs SteepGS (with its defaults) vs MCMC at SteepGS's count, on every scene in ../shared/data/scenes.

Every run uses the schedule of ``benchmarks/splat_train.py`` (same seed, steps, learning rates, pruning and
opacity resets) with the trainer's own initialisation (SfM points only, ``--init_random=0``), so the final
count is set by densification rather than by random filler points; only the strategy differs. SteepGS runs
with its defaults (nothing tuned here), MCMC with ``cap_max`` = SteepGS's final count on that scene. Each run
is its own process (its peak resident memory is its own), ``--jobs`` of them at a time. 3,000 steps by default:
gsplat's 30,000-step schedule compressed 10x, so densification (steps 300 to 1,500, twelve refinements) and not
the capture's SfM points sets the count (at 1,500 steps the plush's SfM points alone were 0.60x ADC's count).

Claims (SteepGS paper): ``gaussians_ratio_steepgs_vs_adc.<scene>`` <= 0.6 on every scene and
``psnr_drop_db.mean`` (ADC minus SteepGS held-out PSNR, averaged over scenes) <= 0.1. Writes
benchmarks/results/densification.json and per scene densification_<scene>.png (ground truth | ADC | SteepGS |
MCMC on the first held-out view).

Run: python benchmarks/densification.py [--quick] [--steps N] [--scenes a,b] [--jobs J] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("BUILD_NO_CUDA", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from splat_train import overrides, shipped_scenes  # noqa: E402  (the shared schedule)

STRATEGIES = ("adc", "steepgs", "mcmc")
ADC_ONLY = ("--strategy.reset_every",)  # schedule keys MCMC has no field for (it never resets opacities)


def schedule(scene: Path, steps: int, run_dir: str, threads: int, strategy: str) -> list[str]:
    """splat_train's schedule on ``scene``, SfM initialisation only, for one strategy."""
    flags = [f for f in overrides(steps, run_dir, threads) if not f.startswith(("--data.root=", "--init_random="))]
    if strategy == "mcmc":
        flags = [f for f in flags if not f.startswith(ADC_ONLY)]
    return [f"--data.root={scene}", "--init_random=0", *flags, f"--strategy.name={strategy}"]


def worker(args: argparse.Namespace) -> None:
    from genai_train.config import load_config
    from splatting.config import TrainConfig
    from splatting.train import train

    flags = schedule(Path(args.scene), args.steps, args.run_dir, args.threads, args.worker)
    cfg = load_config(TrainConfig, None, flags + [f"--render.backend={args.backend}", *args.extra.split()])
    result = train(cfg)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB
    if args.backend == "gsplat":
        import torch

        peak_gb = torch.cuda.max_memory_allocated() / 1e9
    m = result["test"]
    record = {
        "strategy": args.worker,
        "n_gaussians": m["n_gaussians"],
        "test_psnr_db": m["psnr"],
        "test_ssim": m["ssim"],
        "test_lpips": m.get("lpips"),
        "train_minutes": result["train_seconds"] / 60,
        "peak_memory_gb": peak_gb,
        "extra": args.extra.split(),
        "run_dir": args.run_dir,
    }
    Path(args.out).write_text(json.dumps(record))


def side_by_side(runs: dict[str, dict], path: Path) -> Path | None:
    """Ground truth | ADC | SteepGS | MCMC for the first held-out view, from the runs' saved test renders.

    Each saved test render is ``render | ground truth`` side by side (splatting.evaluate.evaluate).
    """
    import imageio.v3 as iio
    import numpy as np

    panels = []
    for r in runs.values():
        folder = Path(r["run_dir"]) / "test_renders"
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if not files:
            return None
        pair = iio.imread(files[0])[..., :3]
        w = pair.shape[1] // 2
        if not panels:
            panels.append(pair[:, w:])  # ground truth
        panels.append(pair[:, :w])  # this strategy's render
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = [x for p in panels for x in (p, gap)][:-1]
    iio.imwrite(path, np.concatenate(row, axis=1))
    return path


def run_one(args: argparse.Namespace, tmp: Path, scene: Path, strategy: str, extra: list[str]) -> dict:
    out = tmp / f"{scene.name}_{strategy}.json"
    cmd = [
        sys.executable, __file__, "--worker", strategy, "--scene", str(scene), "--steps", str(args.steps),
        "--threads", str(args.threads), "--backend", args.backend, "--run-dir", str(tmp / f"{scene.name}_{strategy}"),
        "--out", str(out), f"--extra={' '.join(extra)}",
    ]  # fmt: skip
    with open(tmp / f"{scene.name}_{strategy}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    record = json.loads(out.read_text())
    print(f"{scene.name} {strategy}: {record}", file=sys.stderr)
    return record


def time_steepgs_kernel(device, sizes: list[int]) -> tuple[dict, list[dict]]:
    """SteepGS's kernel vs its twin on 4 views of each of ``sizes`` Gaussians; the claim on the first size."""
    from bench_kernels import steepgs_kernel_vs_twin

    from genai_train.bench import claim

    timings = {}
    for n in sizes:
        timings[str(n)] = t = steepgs_kernel_vs_twin(n, 4, 20, device)
        print(f"SteepGS {n:,} Gaussians x 4 views: kernel {t['kernel_s'] * 1e3:.3f} ms vs twin "
              f"{t['twin_s'] * 1e3:.3f} ms (ratio {t['ratio']:.3f})", file=sys.stderr, flush=True)  # fmt: skip
    return timings, [claim("fused_update_vs_twin.steepgs", timings[str(sizes[0])]["ratio"], "<=", 0.5)]


def kernels_only(args: argparse.Namespace) -> None:
    """--kernels-only: SteepGS's kernel vs its twin alone (on the CPU only as a dry run through Triton's interpreter,
    on 2,000 Gaussians)."""
    from bench_kernels import kernel_device, write_kernel_result

    device = kernel_device()
    sizes = [200_000, 1_000_000] if device.type == "cuda" else [2_000]
    timings, claims = time_steepgs_kernel(device, sizes)
    config = {"views": 4, "reps": 20, "gaussians": sizes, "claim_on": sizes[0]}
    results = Path(args.results) if args.results else HERE / "results"
    write_kernel_result("densification_kernels", config, claims, timings, device, str(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run (60 steps per run)")
    ap.add_argument("--steps", type=int, default=0, help="steps per run (default 3000, quick 60)")
    ap.add_argument("--scenes", default="", help="scene names or folders, comma-separated (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each in its own process)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")), help="threads per run")
    ap.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "gsplat"],
        help="renderer: our PyTorch rasterizer (any device) or gsplat CUDA (GPU)",
    )
    ap.add_argument(
        "--kernels",
        default="auto",
        choices=["auto", "triton", "torch"],
        help="SteepGS's strategy.kernels; with triton on a CUDA machine its fused splitting-matrix kernel is also "
        "timed against the torch twin (claim fused_update_vs_twin.steepgs); on the CPU the twin runs",
    )
    ap.add_argument(
        "--kernels-only",
        action="store_true",
        help="time only SteepGS's fused splitting-matrix kernel against its torch twin (CUDA), 4 views of 200,000 "
        "Gaussians (the claim) and of 1,000,000 (reported), and write densification_kernels.json; no training",
    )
    ap.add_argument("--results", default="", help="results folder (default benchmarks/results)")
    ap.add_argument("--worker", choices=STRATEGIES, help=argparse.SUPPRESS)
    ap.add_argument("--scene", default="", help=argparse.SUPPRESS)
    ap.add_argument("--extra", default="", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (60 if args.quick else 3000)
    if args.worker:
        worker(args)
        return

    from genai_train.bench import claim, write_result

    if args.kernels_only:
        kernels_only(args)
        return
    scenes = shipped_scenes(args.scenes)
    import torch

    kernels = {"mode": args.kernels, "used": args.kernels != "torch" and torch.cuda.is_available()}
    kernel_claims = []
    if args.kernels == "triton" and torch.cuda.is_available():
        kernels["timings"], kernel_claims = time_steepgs_kernel(torch.device("cuda"), [200_000])
    elif args.kernels == "triton":
        print(
            "--kernels triton: no CUDA device, so the Triton kernel is not used; the torch twin runs", file=sys.stderr
        )
    steep_extra = [f"--strategy.kernels={args.kernels if kernels['used'] else 'torch'}"]
    results = Path(args.results) if args.results else HERE / "results"
    results.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="densification_bench_"))
    print(f"runs and their logs under {tmp}", file=sys.stderr)
    runs: dict[str, dict[str, dict]] = {s.name: {} for s in scenes}
    # SteepGS first (MCMC waits for its count), then ADC; each MCMC run is queued as soon as its cap is known
    with ThreadPoolExecutor(args.jobs) as pool:
        mcmc: dict[str, Future] = {}

        def queue_mcmc(scene: Path, steep: Future) -> None:
            cap = steep.result()["n_gaussians"]
            mcmc[scene.name] = pool.submit(run_one, args, tmp, scene, "mcmc", [f"--strategy.cap_max={cap}"])

        steep = {s.name: pool.submit(run_one, args, tmp, s, "steepgs", steep_extra) for s in scenes}
        adc = {s.name: pool.submit(run_one, args, tmp, s, "adc", []) for s in scenes}
        for s in scenes:
            queue_mcmc(s, steep[s.name])
        for s in scenes:
            runs[s.name] = {
                "adc": adc[s.name].result(),
                "steepgs": steep[s.name].result(),
                "mcmc": mcmc[s.name].result(),
            }

    claims, per_scene = [], {}
    for s in scenes:
        r = runs[s.name]
        ratio = r["steepgs"]["n_gaussians"] / r["adc"]["n_gaussians"]
        drop = r["adc"]["test_psnr_db"] - r["steepgs"]["test_psnr_db"]
        image = side_by_side(r, results / f"densification_{s.name}{'.quick' if args.quick else ''}.png")
        per_scene[s.name] = {
            "gaussians_ratio_steepgs_vs_adc": ratio,
            "psnr_drop_db": drop,
            "mcmc_psnr_drop_db": r["adc"]["test_psnr_db"] - r["mcmc"]["test_psnr_db"],
            "side_by_side": str(image) if image else None,
        }
        claims.append(claim(f"gaussians_ratio_steepgs_vs_adc.{s.name}", ratio, "<=", 0.6))
    mean_drop = sum(p["psnr_drop_db"] for p in per_scene.values()) / len(per_scene)
    claims.append(claim("psnr_drop_db.mean", mean_drop, "<=", 0.1))
    claims += kernel_claims
    config = {
        "scenes": [s.name for s in scenes],
        "data_factor": 8,
        "steps": args.steps,
        "threads": args.threads,
        "jobs": args.jobs,
        "backend": args.backend,
        "schedule": {k: schedule(Path("<scene>"), args.steps, "<run_dir>", args.threads, k) for k in STRATEGIES},
        "steepgs_options": steep_extra,
        "mcmc_options": "--strategy.cap_max=<SteepGS's final count on the scene>",
    }
    data = {"runs": runs, "per_scene": per_scene, "kernels": kernels}
    path = write_result("densification", config, claims, data, quick=args.quick, out_dir=str(results))
    print(json.dumps({"claims": claims, "per_scene": per_scene}, indent=2))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
