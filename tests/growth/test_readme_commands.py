"""Every `genai-train grow` command line of the READMEs runs (shrunk to a couple of steps on tiny data)."""

import re
import shlex
from pathlib import Path

import pytest

from genai_train.cli import main

ROOT = Path(__file__).resolve().parents[2]
# appended to each command: later flags win, so the README's sizes and step counts shrink to seconds
TINY = [
    "--data.seq_len=16",
    "--data.batch_size=2",
    "--data.val_batches=1",
    "--ligo.steps=1",
    "--ligo.warmup_steps=0",
    "--train.steps=1",
    "--optim.rank=4",
    "--run.device=cpu",
    "--run.tensorboard=false",
]


def readme_commands() -> list[list[str]]:
    """`grow` command lines (continuations joined, torchrun prefix dropped) of README.md and growth/README.md;
    lines with a `...` placeholder are skipped."""
    out = []
    for readme in (ROOT / "README.md", ROOT / "growth" / "README.md"):
        text = readme.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            m = re.match(r"^(?:genai-train|torchrun .*-m genai_train\.cli) grow (.*)$", line)
            if m and "..." not in m.group(1):
                out.append(shlex.split(m.group(1)))
    return out


def test_readme_grow_commands_run(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert len(commands) >= 5 and any("--method" in c and "scratch" in c for c in commands)
    commands.sort(key=lambda c: "--small" in c)  # the small model first: the others grow runs/small/hf
    for argv in commands:
        argv = [str(corpus) if a == "TEXT" else a for a in argv]
        assert main(["grow", *argv, *TINY]) == 0, argv
    assert (tmp_path / "runs" / "small" / "hf" / "config.json").exists()
    assert (tmp_path / "runs" / "grown-ddp" / "hf" / "model.safetensors").exists()


@pytest.mark.parametrize("flag", ["--arch=llama", "--arch llama"])
def test_arch_flag_is_accepted(corpus, tmp_path, flag):
    argv = [*shlex.split(flag), "--method", "scratch", "--target", "layers=1,d_model=16,heads=2,ffn=32"]
    assert main(["grow", *argv, "--data", str(corpus), "--out", str(tmp_path / "r"), *TINY]) == 0
    assert '"model_type": "llama"' in (tmp_path / "r" / "hf" / "config.json").read_text()
