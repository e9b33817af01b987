"""Every command line of the README runs: each is executed as written (in order, in a scratch folder laid out
like the repository), with flags appended that only shorten it (fewer steps, fewer samples, the CPU)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from genai_train.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# usage synopses (placeholders in <> or optional parts in []), not commands to run
SYNOPSES = {
    "genai-train <task> <verb> --help",
    "genai-train <task> <verb> --config configs/<task>/<file>.yaml --section.field=value ...",
    "genai-train demo [--only lm,diffusion,splat,grow] [--out runs/demo]",
    "genai-train lm train --dist.algo=halos --dist.regions=configs/dist/<file>.yaml",
    # a latent run needs an autoencoder folder the user brings (tests/diffusion/test_latent.py trains one)
    "genai-train diffusion train --data data/shapes --labels folders --model.vae <autoencoder-folder> --resolution 32 "
    "--config configs/diffusion/emoji32_cpu.yaml --out runs/shapes-latent",
}

# appended to a command of (task, verb) so it finishes in seconds; later flags win over the README's own
SHORTEN = {
    # dist.*: ignored by DDP; HALoS pushes after 2 updates and the simulator takes a given step time
    ("lm", "train"): [
        "--train.steps=2",
        "--run.device=cpu",
        "--run.threads=1",
        "--dist.halos.push_every=2",
        "--dist.step_ms=20",
    ],  # fmt: skip
    ("diffusion", "train"): ["--train.steps=1", "--preview.every=0", "--run.device=cpu", "--data.batch_size=2"],
    ("diffusion", "sample"): ["--n=2", "--steps=2", "--device=cpu"],
    ("diffusion", "export"): [],
    ("diffusion", "shapes"): ["--n=8"],
    ("diffusion", "eval"): ["--n=4", "--steps=2", "--device=cpu", "--floor=false"],
    ("grow", ""): ["--train.steps=2", "--ligo.steps=2", "--run.device=cpu", "--data.max_mb=0.05"],
    ("splat", "train"): ["--train.steps=2", "--run.device=cpu", "--data.test_every=8"],
    ("splat", "eval"): ["--device=cpu"],
    ("splat", "render"): ["--frames=2", "--device=cpu"],
    ("splat", "export"): [],
    ("splat", "view"): ["--seconds=1", "--port=0"],
}


def readme_commands() -> list[str]:
    """The command lines in the README's shell code blocks (fences without a language, or sh/bash;
    continuations joined, comments dropped)."""
    out, block, lang = [], None, ""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if block is None:
                block, lang = [], line[3:].strip()
                continue
            if lang in ("", "sh", "bash", "shell", "console"):
                for cmd in "\n".join(block).replace("\\\n", " ").splitlines():
                    cmd = cmd.split("  #")[0].strip()
                    if cmd.startswith(("genai-train", "torchrun")):
                        out.append(" ".join(cmd.split()))
            block = None
        elif block is not None:
            block.append(line)
    return out


def _task_verb(argv: list[str]) -> tuple[str, str]:
    task = argv[0]
    verb = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else ""
    return task, verb


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    if not SHARED.is_dir():
        pytest.skip("../shared (the real data beside the repository) is not here")
    work = tmp_path / "repo"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "shared").symlink_to(SHARED)
    text = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    inception = tmp_path / "inception.pt"  # a stand-in feature network (the real one is an 87 MB download)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=16), torch.nn.AdaptiveAvgPool2d(1))
    torch.jit.script(net).save(str(inception))
    monkeypatch.chdir(work)
    torch.set_num_threads(1)
    commands = readme_commands()
    assert {c for c in commands if "<" in c or "[" in c} == SYNOPSES
    ran = []
    for line in commands:
        if line in SYNOPSES:
            continue
        argv = shlex.split(line.replace("TEXT", str(text)))
        if argv[0] == "torchrun":
            module_args = argv[argv.index("-m") + 2 :]
            extra = SHORTEN[_task_verb(module_args)]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *argv[1:], *extra]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
            assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
        else:
            args = argv[1:]
            extra = [] if not args or args[0] in ("--help", "env") else SHORTEN[_task_verb(args)]
            if _task_verb(args) == ("diffusion", "eval"):
                extra = [*extra, f"--inception={inception}"]
            code = main([*args, *extra])
            assert code == 0, f"{line}\n{capsys.readouterr().err[-3000:]}"
        ran.append(line)
    assert len(ran) >= 10, ran
