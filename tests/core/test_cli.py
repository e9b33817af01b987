"""The command line: lazy help, closest-match errors, overrides reaching the config, clean exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from genai_train.cli import main


def test_help_imports_no_heavy_package():
    code = (
        "import sys; from genai_train.cli import main; main(['--help']); "
        "heavy = [m for m in ('torch', 'diffusers', 'gsplat', 'transformers') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "genai-train <task>" in out and "splat" in out and "grow" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lmm"], "unknown task 'lmm' (did you mean 'lm'?)"),
        (["lm", "trian"], "unknown verb 'trian' for task 'lm' (did you mean 'train'?)"),
        (["lm", "train", "--optim.lrr=1"], "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
        (["lm", "train", "--trian.steps=1"], "unknown config key 'trian' (did you mean 'train'?)"),
        (["lm", "train", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
        (["lm", "train", "stray"], "unexpected argument 'stray'"),
        (["lm", "train", "--steps"], "option --steps needs a value"),
        (["demo", "--onyl=lm"], "unknown demo option --onyl (did you mean 'only'?)"),
    ],
)
def test_bad_command_lines_exit_2_with_closest_match(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("genai-train: error: ") and message in err
    assert "Traceback" not in err


def test_command_help_lists_keys_with_defaults(capsys):
    assert main(["lm", "train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--optim.lr=0.001" in out and "--data" in out and "= --data.path" in out


def test_shortcuts_and_overrides_reach_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(
        [
            "lm",
            "train",
            "--out",
            str(run),
            "--steps",
            "3",
            "--model.d_model=16",
            "--model.n_heads=2",
            "--run.device=cpu",
            "--run.tensorboard=false",
            "--data.batch_size=2",
            "--optim.lr=3e-4",
        ]
    )
    assert rc == 0
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["steps"] == 3 and saved["model"]["d_model"] == 16 and saved["optim"]["lr"] == 3e-4
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3]
    # a second run into the same folder with a different model is refused, nothing overwritten
    before = sorted(p.name for p in (run / "ckpt").iterdir())
    assert main(["lm", "train", "--out", str(run), "--steps", "4", "--model.d_model=32"]) == 2
    assert "cannot resume: the config changed" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == before


def test_foreign_run_dir_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["lm", "train", "--out", str(tmp_path), "--steps", "1"]) == 2
    assert "not created by genai-train" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_env_reports_device_and_backends(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "chosen (auto):" in out and "gsplat CUDA rasterizer usable:" in out
    import torch

    if not torch.cuda.is_available():
        assert "Triton kernels not used (no CUDA device): the pure-torch twins run for adam_direction" in out


def _help_keys(capsys, argv: list[str]) -> list[str]:
    assert main([*argv, "--help"]) == 0
    return [line.split("=")[0].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  --")]


def test_every_task_lists_the_same_run_and_train_keys(capsys):
    keys = {task: _help_keys(capsys, [task, "train"]) for task in ("lm", "diffusion", "splat", "grow")}
    shared = {task: sorted(k for k in ks if k.startswith(("--run.", "--train."))) for task, ks in keys.items()}
    expected = [
        "--run.device",
        "--run.dir",
        "--run.log_every",
        "--run.precision",
        "--run.seed",
        "--run.tensorboard",
        "--run.threads",
        "--train.grad_accum",
        "--train.grad_clip",
        "--train.steps",
    ]
    assert all(v == expected for v in shared.values()), shared
    assert all("--optim.name" in ks for ks in keys.values())
