"""Splatting on the core run lifecycle: exact resume across densification, validate-then-write, path spellings,
two gloo ranks equal to one process on the combined views, typed saved config, ADC/SteepGS help, README lines."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

pytest.importorskip("pycolmap")

from genai_train.checkpoint import Checkpointer  # noqa: E402
from genai_train.cli import main as cli_main  # noqa: E402
from genai_train.config import ConfigError, load_config  # noqa: E402
from genai_train.testing import path_spellings, spawn_ranks, tree_hashes  # noqa: E402
from splatting.config import EvalCommandConfig, TrainConfig  # noqa: E402
from splatting.evaluate import _run_settings, run_eval  # noqa: E402
from splatting.synthetic import write_colmap_scene  # noqa: E402
from splatting.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
N_POINTS = 60


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("run_scene")
    write_colmap_scene(d, n_views=9, width=32, height=24, n_gaussians=80, n_points=N_POINTS)
    return d


def _overrides(scene, run_dir, steps=10, **extra) -> list[str]:
    """A schedule that densifies at steps 3 and 6 and resets opacities at step 7 (inside 10 steps)."""
    out = [
        f"--data.root={scene}",
        "--data.factor=1",
        f"--run.dir={run_dir}",
        f"--train.steps={steps}",
        "--sh_degree=1",
        "--sh_degree_interval=4",
        "--strategy.refine_start=2",
        "--strategy.refine_every=3",
        "--strategy.reset_every=7",
        "--strategy.grow_grad2d=1e-6",
        "--ckpt.every=5",
        "--run.log_every=1",
        "--run.tensorboard=false",
        "--render.tile_size=8",
        "--render.background=random",
        "--export_ply=false",
        "--eval.save_images=false",
        "--run.threads=1",
    ]
    if extra.get("strategy.name") == "mcmc":  # its own schedule: relocate the fading half, grow 5% at 3, 6, 9
        out = [a for a in out if not a.startswith(("--strategy.reset_every", "--strategy.grow_grad2d"))]
        out += ["--strategy.min_opacity=0.1"]
    return out + [f"--{k}={v}" for k, v in extra.items()]


def _cfg(scene, run_dir, steps=10, **extra) -> TrainConfig:
    return load_config(TrainConfig, None, _overrides(scene, run_dir, steps, **extra))


def _latest(run_dir):
    return Checkpointer(Path(run_dir) / "ckpt", task="splat").load_latest()


def _counts(run_dir) -> list[int]:
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["n_gaussians"] for r in rows if "loss" in r]


def _straight_and_resumed(scene, tmp_path, state_keys: tuple[str, ...], **extra) -> tuple[dict, dict, dict, dict]:
    """10 straight steps in run dir a, and 5 + resume + 5 in b: asserts densification happened inside the 10 steps
    and that both runs end equal bit for bit (Gaussians, the optimizers' ``state_keys``); returns both runs' results
    and latest checkpoints for the caller's own checks."""
    straight = train(_cfg(scene, tmp_path / "a", **extra))
    assert len(set(_counts(tmp_path / "a"))) > 1  # densified inside the 10 steps
    part = train(_cfg(scene, tmp_path / "b", **extra), stop_after=5)
    assert part["steps_done"] == 5
    rest = train(_cfg(scene, tmp_path / "b", **extra))
    assert rest["steps_done"] == 10 and rest["n_gaussians"] == straight["n_gaussians"]
    (sa, a), (sb, b) = _latest(tmp_path / "a"), _latest(tmp_path / "b")
    assert sa == sb == 10
    for k, v in a["gaussians"].items():
        assert torch.equal(v, b["gaussians"][k]), k
    for k, opt in a["optimizers"].items():
        for key in state_keys:
            assert torch.equal(opt["state"][0][key], b["optimizers"][k]["state"][0][key]), (k, key)
    return straight, rest, a, b


@pytest.mark.parametrize("strategy", ["adc", "steepgs", "mcmc"])
def test_resume_at_step_5_matches_10_straight_steps_bit_for_bit_across_densification(scene, tmp_path, strategy):
    straight, rest, a, b = _straight_and_resumed(
        scene, tmp_path, ("exp_avg", "exp_avg_sq"), **{"strategy.name": strategy}
    )
    assert straight["n_gaussians"] != N_POINTS
    if strategy == "mcmc":
        rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
        assert sum(r.get("relocated", 0) for r in rows) > 0 and sum(r.get("added", 0) for r in rows) > 0
    for k, v in a["strategy"]["value"].items():
        assert (
            torch.equal(v, b["strategy"]["value"][k]) if isinstance(v, torch.Tensor) else v == b["strategy"]["value"][k]
        )
    assert straight["test"]["psnr"] == rest["test"]["psnr"]


def test_refused_resume_leaves_every_file_byte_identical_and_a_missing_scene_writes_nothing(scene, tmp_path):
    run = tmp_path / "r"
    train(_cfg(scene, run, **{"run.tensorboard": "true"}), stop_after=3)
    before = tree_hashes(run)
    with pytest.raises(ConfigError, match=r"cannot resume.*sh_degree: 1 -> 2"):
        train(_cfg(scene, run, sh_degree=2, **{"run.tensorboard": "true"}))
    assert tree_hashes(run) == before
    with pytest.raises(ConfigError, match=r"data.factor: 1 -> 2"):
        train(_cfg(scene, run, **{"run.tensorboard": "true", "data.factor": 2, "data.cache_dir": tmp_path / "c"}))
    assert tree_hashes(run) == before
    with pytest.raises(Exception, match="nope"):
        train(_cfg(tmp_path / "nope", tmp_path / "never"))
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="no scene given"):
        train(load_config(TrainConfig, None, [f"--run.dir={tmp_path / 'never'}"]))
    assert not (tmp_path / "never").exists()


def test_scene_path_spelled_three_ways_resumes_one_run(scene, tmp_path, monkeypatch, recwarn):
    monkeypatch.chdir(tmp_path)
    straight = train(_cfg(scene, tmp_path / "straight", steps=6))
    run = tmp_path / "run"
    for spelling in path_spellings(Path(scene), tmp_path):
        result = train(_cfg(spelling, run, steps=6), stop_after=2)
    assert result["steps_done"] == 6
    assert not [w for w in recwarn if "data.root" in str(w.message)]
    a, b = _latest(tmp_path / "straight")[1]["gaussians"], _latest(run)[1]["gaussians"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert str(Path(scene).resolve()) in (run / "config.yaml").read_text()  # saved resolved
    assert straight["n_gaussians"] == result["n_gaussians"]


def _rank_main(rank: int, scene: str, run_dir: str, out: str, strategy: str, optim: str) -> None:
    result = train(_cfg(scene, run_dir, **{"strategy.name": strategy, "optim.name": optim}))
    torch.save(result["gaussians"], Path(out) / f"rank{rank}.pt")


# SteepGS with selective Adam: the split bar (a mean of the views' losses) and the visibility mask (the union of
# the step's views) must both be gathered over the ranks' views to equal one process seeing all of them
@pytest.mark.parametrize("strategy,optim", [("adc", "adam"), ("mcmc", "adam"), ("steepgs", "selective_adam")])
def test_two_ranks_equal_one_process_on_the_combined_views(scene, tmp_path, strategy, optim):
    one = train(
        _cfg(scene, tmp_path / "one", **{"train.grad_accum": 2, "strategy.name": strategy, "optim.name": optim})
    )
    assert len(set(_counts(tmp_path / "one"))) > 1  # a densification event inside the run
    spawn_ranks(_rank_main, world=2, args=(str(scene), str(tmp_path / "ddp"), str(tmp_path), strategy, optim))
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # replicated: identical on both ranks
    for k, v in one["gaussians"].items():
        assert v.shape == r0[k].shape, k
        assert (v - r0[k]).abs().max() <= 1e-6, k
    steps = [json.loads(x)["step"] for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if s <= 10]
    assert sorted(set(train_steps)) == list(range(1, 11))
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss" in r]) == 10  # one writer: no duplicated step rows
    assert Checkpointer(tmp_path / "ddp" / "ckpt").complete_steps() == [5, 10]
    saved = _latest(tmp_path / "ddp")[1]["gaussians"]
    assert all(torch.equal(saved[k], r0[k]) for k in r0)


def test_help_of_each_strategy_lists_only_its_own_fields(capsys):
    assert cli_main(["splat", "train", "--help"]) == 0
    adc = capsys.readouterr().out
    assert cli_main(["splat", "train", "--strategy.name=steepgs", "--help"]) == 0
    steep = capsys.readouterr().out
    for only_steep in ("strategy.estimator", "strategy.split_threshold", "strategy.min_decrease", "halve_opacity"):
        assert only_steep in steep and only_steep not in adc
    for only_adc in ("strategy.grow_scale3d", "strategy.revised_opacity"):
        assert only_adc in adc and only_adc not in steep
    assert cli_main(["splat", "train", "--strategy.name=mcmc", "--help"]) == 0
    mcmc = capsys.readouterr().out
    for only_mcmc in ("strategy.cap_max", "strategy.noise_lr", "strategy.min_opacity", "strategy.opacity_reg"):
        assert only_mcmc in mcmc and only_mcmc not in adc and only_mcmc not in steep
    assert "strategy.grow_scale3d" not in mcmc and "strategy.reset_every" not in mcmc
    for both in ("strategy.refine_every", "train.steps", "train.grad_accum", "optim.means", "run.precision"):
        assert both in adc and both in steep
    assert cli_main(["splat", "train", "--strategy", "steepgs", "--optim.name=adam", "--help"]) == 0
    assert "strategy.estimator" in capsys.readouterr().out


def test_eval_reads_the_saved_config_with_the_typed_loader(scene, tmp_path):
    run = tmp_path / "f2"
    cache = tmp_path / "cache"
    overrides = {"data.factor": 2, "data.cache_dir": cache, "render.background": "white", "render.mode": "antialiased"}
    train(_cfg(scene, run, steps=2, **overrides))
    saved = load_config(TrainConfig, run / "config.yaml")
    assert saved.data.factor == 2 and saved.render.background == "white"
    assert _run_settings(str(run)).mode == "antialiased"  # eval and render draw the way the run trained
    m = run_eval(EvalCommandConfig(run_dir=str(run), device="cpu", out=str(tmp_path / "ev")))
    assert m["n_views"] == 2  # 9 views, every 8th held out (images 0 and 8)
    import imageio.v3 as iio

    pair = iio.imread(next((tmp_path / "ev" / "renders").glob("*.png")))
    assert pair.shape[:2] == (12, 32)  # 32x24 at the run's factor 2, render | ground truth


def test_precision_other_than_fp32_is_reported_as_ignored(scene, tmp_path, capsys):
    train(_cfg(scene, tmp_path / "p", steps=1, **{"run.precision": "bf16"}))
    assert "run.precision=bf16: ignored" in capsys.readouterr().err


def _readme_lines() -> list[str]:
    lines = []
    for readme in (ROOT / "README.md", ROOT / "splatting" / "README.md"):
        for line in readme.read_text().splitlines():
            if line.startswith("genai-train splat "):
                lines.append(line.split("#")[0].strip())
    return lines


def test_every_splat_command_line_of_the_readmes_runs(scene, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the lines name configs/ relative to the repository
    lines = _readme_lines()
    assert len(lines) >= 8
    tiny = [
        f"--scene={scene}",
        "--data.factor=1",
        "--train.steps=2",
        "--ckpt.every=0",
        "--eval.save_images=false",
        "--run.tensorboard=false",
        "--sh_degree=1",
        f"--data.cache_dir={tmp_path / 'cache'}",
    ]
    for line in sorted(lines, key=lambda x: " train " not in x):  # the runs first, then what reads them
        argv = [re.sub(r"^runs/(\w+)$", str(tmp_path / r"\1"), a) for a in shlex.split(line)[1:]]
        argv = [str(tmp_path / a) if a.endswith(".ply") else a for a in argv]
        if argv[1] == "train" and "--help" not in argv:
            run_dir = load_config(TrainConfig, argv[argv.index("--config") + 1]).run.dir if "--config" in argv else ""
            argv += tiny + ([f"--run.dir={tmp_path / Path(run_dir).name}"] if run_dir else [])
        if argv[1] == "render":
            argv += ["--frames=3"]
        if argv[1] == "view":
            argv += ["--seconds=1", "--port=0"]
        assert cli_main(argv) == 0, line
    assert (tmp_path / "figurine.ply").exists() and (tmp_path / "fig" / "render" / "turntable.gif").exists()
    assert (tmp_path / "splat_figurine" / "render" / "turntable.gif").exists()


def test_grad_clip_bounds_the_update_and_zero_turns_it_off(scene, tmp_path):
    off = train(_cfg(scene, tmp_path / "off", steps=3))["gaussians"]
    wide = train(_cfg(scene, tmp_path / "wide", steps=3, **{"train.grad_clip": 1e9}))["gaussians"]
    tight = train(_cfg(scene, tmp_path / "tight", steps=3, **{"train.grad_clip": 1e-12}))["gaussians"]
    assert all(torch.equal(off[k], wide[k]) for k in off)  # a norm never reached changes nothing
    assert any(not torch.equal(off[k], tight[k]) for k in off)


def test_splat_writes_tensorboard_scalars(scene, tmp_path):
    from genai_train.testing import tensorboard_scalars

    cfg = load_config(TrainConfig, None, _overrides(scene, tmp_path / "r", steps=3) + ["--run.tensorboard=true"])
    train(cfg)
    scalars = tensorboard_scalars(tmp_path / "r")
    assert scalars["loss"] == [1, 2, 3] and "n_gaussians" in scalars
