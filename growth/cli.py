"""``genai-train grow``: grow a small checkpoint with LiGO (or a baseline) and keep training it.

    genai-train grow --small CKPT --target "layers=8,d_model=256,heads=8,ffn=1024" --data TEXT \\
        --ligo-steps 100 --train-steps 2000
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

from genai_train.commands import Command
from genai_train.config import load_config
from growth.train import GrowConfig, run

__all__ = ["COMMANDS", "demo", "stdlib_dir"]

_GROW = Command(
    help="grow a small transformer checkpoint into a larger one (LiGO | stack | scratch), keep training",
    run=run,
    config=GrowConfig,
    shortcuts={
        "small": "small",
        "target": "target",
        "arch": "arch",
        "data": "data.root",
        "method": "method",
        "ligo-steps": "ligo.steps",
        "train-steps": "train.steps",
        "out": "run.dir",
    },
    example='genai-train grow --small runs/small/hf --target "layers=8,d_model=256,heads=8,ffn=1024" '
    "--data ~/text --ligo-steps 100 --train-steps 2000",
)
# `genai-train grow ...` and `genai-train grow train ...` are the same command (every task trains with `train`)
COMMANDS: dict[str, Command] = {"": _GROW, "train": _GROW}


def stdlib_dir() -> Path:
    """The Python standard library's source folder: a real text corpus on every machine with Python."""
    return Path(sysconfig.get_paths()["stdlib"])


def _curve(run_dir: Path, key: str = "val_loss") -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r[key]) for r in rows if key in r]


def demo(out_dir: Path) -> dict[str, str]:
    """A couple of minutes on CPU: train a tiny byte-level GPT on stdlib sources, grow it 2x deep and 2x wide
    with LiGO, stacking + Net2Net and from scratch, and plot the validation curves."""
    import torch

    from genai_train.plot import line_chart

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    out_dir = Path(out_dir)
    common = [
        f"--data.root={stdlib_dir()}",
        "--data.max_mb=1.0",
        "--data.exclude=[__pycache__,site-packages,test,tests,idlelib,tkinter,lib2to3,ensurepip]",
        "--data.seq_len=64",
        "--data.batch_size=16",
        "--data.val_batches=4",
        "--run.device=cpu",
        "--run.log_every=15",
        "--eval.every=15",
        "--ckpt.every=0",
        "--schedule.warmup_steps=20",
    ]
    small = run(
        load_config(
            GrowConfig,
            None,
            common
            + [
                "--method=scratch",
                "--target=layers=2,d_model=64,heads=4,ffn=256",
                "--train.steps=200",
                f"--run.dir={out_dir / 'small'}",
            ],
        )
    )
    target = "layers=4,d_model=128,heads=8,ffn=512"
    results = {"small": small}
    for method, extra in (
        ("ligo", ["--ligo.steps=30", "--train.steps=120"]),
        ("stack", ["--train.steps=120"]),
        ("scratch", ["--train.steps=120"]),
    ):
        results[method] = run(
            load_config(
                GrowConfig,
                None,
                common
                + [
                    f"--method={method}",
                    f"--small={small['hf_folder']}",
                    f"--target={target}",
                    f"--run.dir={out_dir / method}",
                ]
                + extra,
            )
        )
    png = line_chart(
        {m: _curve(out_dir / m) for m in ("ligo", "stack", "scratch")},
        out_dir / "growth_val_loss.png",
        title="grown 2L/64 -> 4L/128 byte GPT (stdlib sources)",
        xlabel="step",
        ylabel="val loss (nats/byte)",
    )
    metrics = out_dir / "growth_metrics.json"
    metrics.write_text(json.dumps(results, indent=2, default=str))
    return {
        "validation curves": str(png),
        "metrics": str(metrics),
        "grown model (HF format)": results["ligo"].get("hf_folder", ""),
    }
