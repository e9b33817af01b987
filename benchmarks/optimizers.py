"""Optimizer benchmark: state memory and step time against the reference packages, and a short real
training run per method (BENCHMARKS.md, claims ``step_time_vs_reference.<m>``,
``state_bytes_vs_reference.<m>``, ``apollo_mini_projected_state_vs_adamw``, ``val_loss_vs_adamw.<m>``).

Model: a GPT with 6 layers, d=512, 8 heads, FFN 2048, vocab 8192, learned positions, RMSNorm, untied head,
no biases (27.4M parameters, fp32, CPU). Settings: GaLore r128 T200 alpha .25; APOLLO r128 channel (d/4, the
paper's setting for its d=512 model); APOLLO-Mini r1 tensor alpha 128 scale_front; Adam-mini (dim 512, 8 heads);
Flora r128 beta1 .9 kappa 1000.

1. State bytes: ``optimizer_state_bytes`` after one step, ours vs the reference package (storages counted
   once, so a slice view that keeps a whole SVD factor alive counts the whole factor).
2. Step time: ``opt.step()`` on fixed real gradients (one batch of 8 x 128 bytes), ours and the reference
   interleaved (A B A B ...), medians; the projection refresh (GaLore's SVD, APOLLO's random matrices) is
   amortised over its gap T: t = median + (first_step - median) / T for both sides, first_step being the
   median over three fresh optimizer pairs (interleaved).
3. Quality: each method trains a fresh model (same seed, same batches) on a byte-level LM over CPython's
   standard-library sources (95/5 split by file), batch 4 x 64 (--batch, --ctx), 10% warm-up + cosine to 10%, clip 1.0,
   once per batch order (--seeds, default three); mean validation loss (nats/byte) on held-out batches, beside the
   unigram floor.

    python benchmarks/optimizers.py            # the run behind the claims (about 60-70 min on 1 core)
    python benchmarks/optimizers.py --quick    # a few-minute smoke run
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genai_train.bench import claim, write_result  # noqa: E402
from genai_train.optim import OptimConfig, build_optimizer, optimizer_state_bytes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpt import DIM, FFN, GPT, HEADS, LAYERS, VOCAB, lm_loss, sample_batch, stdlib_corpus  # noqa: E402

METHODS = ["galore", "apollo", "apollo_mini", "adam_mini", "flora"]
# learning rates of the papers' pre-training recipes (Flora: Adafactor-style update, Adam-like lr)
PAPER_LR = {"adamw": 1e-3, "galore": 1e-2, "apollo": 1e-2, "apollo_mini": 1e-2, "adam_mini": 1e-3, "flora": 1e-3}
BENCH = {"kernels": "auto"}  # optim.kernels of every optimizer built here (--kernels)
FIRST_STEPS = 3  # fresh optimizer pairs whose first (state-allocating, projection-computing) step is timed


# ------------------------------------------------------------------------------------ optimizer pairs
def bench_cfg(name: str, lr: float | None = None) -> OptimConfig:
    kw = {
        "galore": dict(rank=128),
        "apollo": dict(rank=128),
        "apollo_mini": dict(scale_front=True),
        "flora": dict(rank=128, kappa=1000),
    }.get(name, {})
    return OptimConfig(name=name, lr=lr if lr is not None else PAPER_LR[name], kernels=BENCH["kernels"], **kw)


def reference_optimizer(
    name: str, ours: torch.optim.Optimizer, model: nn.Module, ref_model: nn.Module, cfg: OptimConfig
) -> torch.optim.Optimizer:
    """The reference package's optimizer over ``ref_model``, with the same parameter groups as ``ours``."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    ref_params = list(ref_model.parameters())
    groups = []
    for g in ours.param_groups:
        rg = {"params": [ref_params[index[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
        if g.get("low_rank") and name == "galore":
            rg.update(
                rank=cfg.resolved_rank, update_proj_gap=cfg.update_proj_gap, scale=cfg.resolved_scale, proj_type="std"
            )
        elif g.get("low_rank") and name in ("apollo", "apollo_mini"):
            rg.update(
                rank=cfg.resolved_rank,
                proj="random",
                update_proj_gap=cfg.update_proj_gap,
                scale=cfg.resolved_scale,
                proj_type="std",
                scale_type="channel" if name == "apollo" else "tensor",
            )
        groups.append(rg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "galore":
            from galore_torch import GaLoreAdamW

            return GaLoreAdamW(groups, lr=cfg.lr, no_deprecation_warning=True)
        if name in ("apollo", "apollo_mini"):
            from apollo_torch import APOLLOAdamW

            return APOLLOAdamW(groups, lr=cfg.lr, scale_front=cfg.scale_front)
        if name == "adam_mini":
            from adam_mini import Adam_mini

            return Adam_mini(ref_model.named_parameters(), lr=cfg.lr, dim=DIM, n_heads=HEADS, verbose=False)
        if name == "flora":
            from flora_opt.optimizers.torch import Flora

            return Flora(
                groups,
                lr=cfg.lr,
                rank=cfg.resolved_rank,
                kappa=cfg.kappa,
                beta1=cfg.betas[0],
                scale_parameter=cfg.scale_parameter,
            )
    raise ValueError(name)


def timed_step(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> float:
    for p, g in zip(params, grads):
        p.grad = g
    t0 = time.perf_counter()
    opt.step()
    return time.perf_counter() - t0


def state_and_speed(name: str, grads: list[torch.Tensor], reps: int, base: nn.Module) -> dict:
    cfg = bench_cfg(name)
    model, ref_model = copy.deepcopy(base), copy.deepcopy(base)
    pm, pr = list(model.parameters()), list(ref_model.parameters())
    # the first step allocates the state and computes the projections (GaLore's SVD): a median over
    # FIRST_STEPS fresh optimizer pairs, interleaved, so one slow sample on a shared machine does not decide
    firsts_ours, firsts_ref = [], []
    for _ in range(FIRST_STEPS):
        ours = build_optimizer(model, cfg)
        ref = reference_optimizer(name, ours, model, ref_model, cfg)
        firsts_ours.append(timed_step(ours, pm, grads))
        firsts_ref.append(timed_step(ref, pr, grads))
    first_ours, first_ref = statistics.median(firsts_ours), statistics.median(firsts_ref)
    bytes_ours, bytes_ref = optimizer_state_bytes(ours), optimizer_state_bytes(ref)
    t_ours, t_ref = [], []
    for _ in range(reps):  # interleaved
        t_ours.append(timed_step(ours, pm, grads))
        t_ref.append(timed_step(ref, pr, grads))
    med_o, med_r = statistics.median(t_ours), statistics.median(t_ref)
    gap = {
        "galore": cfg.update_proj_gap,
        "apollo": cfg.update_proj_gap,
        "apollo_mini": cfg.update_proj_gap,
        "flora": cfg.kappa,
    }.get(name)
    amort_o = med_o + (first_ours - med_o) / gap if gap else med_o
    amort_r = med_r + (first_ref - med_r) / gap if gap else med_r
    out = {
        "state_bytes": bytes_ours,
        "state_bytes_reference": bytes_ref,
        "step_s_median": med_o,
        "step_s_median_reference": med_r,
        "first_step_s": first_ours,
        "first_step_s_reference": first_ref,
        "first_step_s_samples": firsts_ours,
        "first_step_s_samples_reference": firsts_ref,
        "refresh_gap": gap,
        "step_s_amortized": amort_o,
        "step_s_amortized_reference": amort_r,
        "step_s_samples": t_ours,
        "step_s_samples_reference": t_ref,
    }
    low = [p for g in ours.param_groups if g.get("low_rank") for p in g["params"]]
    if name == "galore":
        r = cfg.resolved_rank
        out["projector_floats_exact"] = all(
            ours.state[p]["proj"].untyped_storage().nbytes() == r * min(p.shape) * p.element_size() for p in low
        )
    if name == "apollo_mini":
        seen: set[int] = set()
        low_bytes = 0
        for p in low:
            for v in ours.state[p].values():
                if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() not in seen:
                    seen.add(v.untyped_storage().data_ptr())
                    low_bytes += v.untyped_storage().nbytes()
        out["projected_state_bytes"] = low_bytes
        out["projected_adamw_state_bytes"] = sum(2 * p.numel() * p.element_size() for p in low)
    del ours, ref
    return out


def train_val(
    name: str,
    base: nn.Module,
    train_data: torch.Tensor,
    val_batches: list[torch.Tensor],
    steps: int,
    batch: int,
    ctx: int,
    reference: bool = False,
    seed: int = 1234,
) -> dict:
    """Train a fresh copy of ``base`` with our optimizer (or, with ``reference``, the reference package's,
    same groups and hyperparameters) on batches drawn with ``seed`` and return its validation loss."""
    from genai_train.schedules import ScheduleConfig, build_scheduler

    model = copy.deepcopy(base)
    cfg = bench_cfg(name)
    opt = build_optimizer(model, cfg)
    if reference:
        ours_model, model = model, copy.deepcopy(base)
        opt = reference_optimizer(name, opt, ours_model, model, cfg)
    sched = build_scheduler(opt, ScheduleConfig("cosine", max(1, steps // 10), 0.1), steps)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = lm_loss(model, sample_batch(train_data, batch, ctx, gen))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(loss.item())
    with torch.no_grad():
        val = statistics.fmean(lm_loss(model, b).item() for b in val_batches)
    return {
        "lr": PAPER_LR[name],
        "val_loss": val,
        "train_loss_every_10": losses[::10],
        "train_loss_last10_mean": statistics.fmean(losses[-10:]),
        "wall_s": time.perf_counter() - t0,
    }


def time_kernels(reps: int, device: torch.device, llama_1b: bool = False) -> tuple[dict, list[dict]]:
    """Each fused kernel vs its twin over the benchmark GPT's matrices (claims ``fused_update_vs_twin.<kernel>``
    <= 0.5) and, with ``llama_1b``, over LLaMA-1B's (reported, no claim)."""
    from bench_kernels import LLAMA_1B_BLOCK, LLAMA_1B_BLOCKS, kernels_vs_twins, launch_overhead

    block = [(DIM, DIM)] * 4 + [(FFN, DIM), (DIM, FFN)]  # the matrices of one block
    scales = {"gpt": block * LAYERS} | ({"llama_1b": LLAMA_1B_BLOCK * LLAMA_1B_BLOCKS} if llama_1b else {})
    rank = 128
    if device.type != "cuda":  # a dry run through the interpreter: ragged shapes a few blocks long
        scales, rank = {"gpt": [(70, 33), (33, 150)]}, 8
    timings = {}
    for scale, shapes in scales.items():
        timings[scale] = kernels_vs_twins(shapes, rank, reps, device)
        for k, t in timings[scale].items():
            print(
                f"{scale:8s} kernel {k:20s} {t['kernel_s'] * 1e3:8.3f} ms vs twin {t['twin_s'] * 1e3:8.3f} ms "
                f"(ratio {t['ratio']:.3f})",
                flush=True,
            )
    claims = [claim(f"fused_update_vs_twin.{k}", t["ratio"], "<=", 0.5) for k, t in timings["gpt"].items()]
    timings["launch"] = launch_overhead(reps, device)
    print(
        f"one launch: Triton kernel {timings['launch']['triton_launch_s'] * 1e6:.1f} us, torch op "
        f"{timings['launch']['torch_op_s'] * 1e6:.1f} us",
        flush=True,
    )
    return timings, claims


def kernels_only(reps: int, out: str | None) -> None:
    """--kernels-only: the kernel-vs-twin timings alone (on the CPU only as a dry run through Triton's interpreter)."""
    from bench_kernels import kernel_device, write_kernel_result

    device = kernel_device()
    timings, claims = time_kernels(reps, device, llama_1b=device.type == "cuda")
    config = {
        "rank": 128,
        "reps": reps,
        "shapes": {"gpt": {"layers": LAYERS, "dim": DIM, "ffn": FFN}, "llama_1b": "d 2048, MLP 5461, 24 blocks"},
        "claims_on": "gpt",
    }
    write_kernel_result("optimizers_kernels", config, claims, timings, device, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: machines are shared)")
    ap.add_argument("--steps", type=int, default=None, help="training steps a method (default 300, quick 15)")
    ap.add_argument("--reps", type=int, default=None, help="timed steps per side (default 30, quick 6)")
    ap.add_argument("--batch", type=int, default=4, help="training sequences per step (default 4)")
    ap.add_argument("--ctx", type=int, default=64, help="training sequence length in bytes (default 64)")
    ap.add_argument("--skip-train", action="store_true", help="only state bytes and step time")
    ap.add_argument(
        "--seeds",
        default=None,
        help="comma-separated batch-order seeds; each method trains once per seed and the claim "
        "compares mean validation losses (default 1234,1,2: one 300-step run moves by about "
        "3%%; quick: 1234)",
    )
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument(
        "--train-reference",
        action="store_true",
        help="also train each method with its reference package (same seed and batches)",
    )
    ap.add_argument(
        "--kernels",
        default="auto",
        choices=["auto", "triton", "torch"],
        help="optim.kernels of every optimizer; with triton on a CUDA machine each fused kernel is also timed "
        "against its torch twin (claims fused_update_vs_twin.<kernel>); on the CPU the twins run",
    )
    ap.add_argument(
        "--kernels-only",
        action="store_true",
        help="time only the fused Triton kernels against their torch twins (CUDA), on the benchmark GPT's matrices "
        "(the claims) and on LLaMA-1B's (reported), and write optimizers_kernels.json",
    )
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    steps = args.steps or (15 if args.quick else 300)
    try:
        seeds = [int(s) for s in (args.seeds or ("1234" if args.quick else "1234,1,2")).split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 1234,1,2") from None
    if not seeds:
        raise SystemExit("--seeds: give at least one seed")
    reps = args.reps or (6 if args.quick else 30)
    if args.kernels_only:
        kernels_only(reps, args.out)
        return
    BENCH["kernels"] = "torch" if args.kernels == "triton" and not torch.cuda.is_available() else args.kernels
    if args.kernels == "triton" and not torch.cuda.is_available():
        print("--kernels triton: no CUDA device, so the Triton kernels are not used; the torch twins run", flush=True)
    torch.manual_seed(0)
    base = GPT()
    n_params = sum(p.numel() for p in base.parameters())
    train_data, val_data = stdlib_corpus()
    print(
        f"GPT {n_params / 1e6:.2f}M params; corpus {train_data.numel() / 1e6:.1f}M train / "
        f"{val_data.numel() / 1e6:.2f}M val bytes",
        flush=True,
    )

    # fixed real gradients for the step-time part
    gen = torch.Generator().manual_seed(0)
    grad_model = copy.deepcopy(base)
    lm_loss(grad_model, sample_batch(train_data, 8, 128, gen)).backward()
    grads = [p.grad.detach().clone() for p in grad_model.parameters()]
    del grad_model

    adamw_model = copy.deepcopy(base)
    adamw = build_optimizer(adamw_model, bench_cfg("adamw"))
    timed_step(adamw, list(adamw_model.parameters()), grads)
    adamw_bytes = optimizer_state_bytes(adamw)
    del adamw, adamw_model

    claims, results = [], {}
    for name in methods:
        r = state_and_speed(name, grads, reps, base)
        results[name] = r
        print(
            f"{name:12s} state {r['state_bytes'] / 1e6:7.1f} MB "
            f"(ref {r['state_bytes_reference'] / 1e6:7.1f}, "
            f"AdamW {adamw_bytes / 1e6:.1f}); step {r['step_s_amortized'] * 1e3:7.1f} ms "
            f"(ref {r['step_s_amortized_reference'] * 1e3:7.1f})",
            flush=True,
        )
        claims.append(
            claim(f"step_time_vs_reference.{name}", r["step_s_amortized"] / r["step_s_amortized_reference"], "<=", 0.7)
        )
        claims.append(
            claim(f"state_bytes_vs_reference.{name}", r["state_bytes"] / r["state_bytes_reference"], "<=", 1.0)
        )
        r["state_vs_adamw"] = r["state_bytes"] / adamw_bytes
        r["state_vs_adamw_reference"] = r["state_bytes_reference"] / adamw_bytes
    if "apollo_mini" in results:
        mini = results["apollo_mini"]
        claims.append(
            claim(
                "apollo_mini_projected_state_vs_adamw",
                mini["projected_state_bytes"] / mini["projected_adamw_state_bytes"],
                "<=",
                0.01,
            )
        )

    kernels = {"mode": args.kernels, "used": args.kernels != "torch" and torch.cuda.is_available()}
    if args.kernels == "triton" and torch.cuda.is_available():
        kernels["timings"], kernel_claims = time_kernels(reps, torch.device("cuda"))
        claims += kernel_claims

    training = {}
    if not args.skip_train:
        gv = torch.Generator().manual_seed(99)
        val_batches = [sample_batch(val_data, 8, 64, gv) for _ in range(4 if args.quick else 16)]
        counts = torch.bincount(train_data, minlength=256).double() + 1.0
        logp = (counts / counts.sum()).log()
        unigram = -statistics.fmean(logp[b[:, 1:]].mean().item() for b in val_batches)
        for name in ["adamw", *methods]:
            runs = [train_val(name, base, train_data, val_batches, steps, args.batch, args.ctx, seed=s) for s in seeds]
            training[name] = {
                **runs[0],
                "val_loss": statistics.fmean(r["val_loss"] for r in runs),
                "val_loss_per_seed": {str(s): r["val_loss"] for s, r in zip(seeds, runs)},
                "wall_s": sum(r["wall_s"] for r in runs),
            }
            per_seed = ", ".join(f"{r['val_loss']:.3f}" for r in runs)
            print(
                f"train {name:12s} lr {PAPER_LR[name]:g}: val {training[name]['val_loss']:.3f} "
                f"(seeds: {per_seed}; {training[name]['wall_s']:.0f} s)",
                flush=True,
            )
            if args.train_reference and name != "adamw":
                ref = train_val(
                    name, base, train_data, val_batches, steps, args.batch, args.ctx, reference=True, seed=seeds[0]
                )
                training[f"{name}_reference"] = ref
                print(f"train {name:12s} (reference package): val {ref['val_loss']:.3f}", flush=True)
        for name in methods:
            claims.append(
                claim(
                    f"val_loss_vs_adamw.{name}", training[name]["val_loss"] / training["adamw"]["val_loss"], "<=", 1.03
                )
            )
        training["unigram_val_loss_floor"] = unigram

    config = {
        "model": {"layers": LAYERS, "dim": DIM, "heads": HEADS, "ffn": FFN, "vocab": VOCAB, "params": n_params},
        "optimizers": {m: {k: v for k, v in vars(bench_cfg(m)).items()} for m in ["adamw", *METHODS]},
        "step_time": {"grad_batch": [8, 128], "reps": reps, "interleaved": True},
        "train": {
            "steps": steps,
            "batch": [args.batch, args.ctx],
            "warmup": max(1, steps // 10),
            "schedule": "cosine",
            "min_lr_ratio": 0.1,
            "clip": 1.0,
            "lr": PAPER_LR,
            "batch_order_seeds": seeds,
        },
    }
    config["methods"] = methods
    path = write_result(
        "optimizers",
        config,
        claims,
        {"adamw_state_bytes": adamw_bytes, "methods": results, "training": training, "kernels": kernels},
        quick=args.quick,
        out_dir=args.out,
    )
    for c in claims:
        print(f"{'ok  ' if c['holds'] else 'FAIL'} {c['name']} = {c['value']:.4g} {c['op']} {c['target']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
