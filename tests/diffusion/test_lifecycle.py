"""The run lifecycle of Patch Diffusion: exact resume, refused resumes write nothing, paths spelled any way,
two gloo ranks equal one process on the combined batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusion.train import DiffusionConfig, make_trainer, train
from genai_train.config import ConfigError, load_config
from genai_train.testing import path_spellings, spawn_ranks, tree_hashes

from .images import write_images

TINY = [
    "--data.resolution=16",
    "--data.batch_size=2",
    "--model.block_out_channels=[16,32]",
    "--model.attention=[false,true]",
    "--model.norm_num_groups=8",
    "--model.attention_head_dim=8",
    "--schedule.warmup_steps=2",
    "--ema.half_life_steps=2",
    "--preview.every=0",
    "--run.log_every=1",
    "--run.device=cpu",
    "--optim.lr=1e-3",
    "--patch.p=0.5",
]


def _cfg(root, run_dir, steps, *extra) -> DiffusionConfig:
    return load_config(
        DiffusionConfig, None, [f"--data.root={root}", f"--run.dir={run_dir}", f"--train.steps={steps}", *TINY, *extra]
    )


def _state(run_dir: Path) -> dict:
    return torch.load(sorted((run_dir / "ckpt").glob("step_*"))[-1] / "state.pt", weights_only=True)


@pytest.fixture
def imgs(tmp_path):
    return write_images(tmp_path / "imgs", n=6, size=(16, 16))


def test_ten_steps_equal_five_resume_five(tmp_path, imgs):
    straight = train(_cfg(imgs, tmp_path / "a", 10, "--ckpt.every=5"))
    train(_cfg(imgs, tmp_path / "b", 5, "--ckpt.every=5"))
    resumed = train(_cfg(imgs, tmp_path / "b", 10, "--ckpt.every=5"))
    assert resumed.resumed_from == 5
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    for part in ("model", "optimizer", "ema", "data"):
        flat_a, flat_b = _flatten(a[part]), _flatten(b[part])
        assert flat_a.keys() == flat_b.keys(), part
        for k in flat_a:
            x, y = flat_a[k], flat_b[k]
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, f"{part}.{k}"
    assert [r["loss"] for r in straight.history if r["step"] > 5] == [r["loss"] for r in resumed.history]


def _flatten(obj, prefix="") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, (list, tuple)):
        return _flatten(dict(enumerate(obj)), prefix)
    return {prefix: obj}


def test_refused_resume_leaves_the_run_dir_byte_identical(tmp_path, imgs):
    run = tmp_path / "r"
    train(_cfg(imgs, run, 2, "--ckpt.every=1"))
    before = tree_hashes(run)
    with pytest.raises(ConfigError, match=r"model.block_out_channels: \[16, 32\] -> \[32, 32\]"):
        make_trainer(_cfg(imgs, run, 4, "--model.block_out_channels=[32,32]"))
    with pytest.raises(ConfigError, match=r"data.resolution: 16 -> 8"):
        make_trainer(_cfg(imgs, run, 4, "--data.resolution=8", "--model.block_out_channels=[16,32]"))
    assert tree_hashes(run) == before


def test_diffusion_writes_tensorboard_scalars(tmp_path, imgs):
    from genai_train.testing import tensorboard_scalars

    train(_cfg(imgs, tmp_path / "r", 2, "--ckpt.every=0", "--run.tensorboard=true"))
    scalars = tensorboard_scalars(tmp_path / "r")
    assert scalars["loss"] == [1, 2] and scalars["kimg"] == [1, 2]


def test_missing_image_folder_creates_no_run_dir(tmp_path):
    with pytest.raises(ValueError, match="no_such"):
        make_trainer(_cfg(tmp_path / "no_such", tmp_path / "never", 2))
    assert not (tmp_path / "never").exists()


def test_image_folder_spelled_three_ways_resumes_one_run(tmp_path, imgs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(_cfg(imgs, tmp_path / "straight", 6, "--ckpt.every=2"))
    for steps, spelling in zip((2, 4, 6), path_spellings(imgs, tmp_path)):
        t = train(_cfg(spelling, tmp_path / "run", steps, "--ckpt.every=2"))
        assert t.resumed_from == (steps - 2 if steps > 2 else None), spelling
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "run")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# Attention key biases have a gradient that is zero in exact arithmetic (softmax ignores a shift of all keys):
# what is left is rounding noise, which depends on the order of the reduction over ranks, and Adam at eps 1e-8
# turns noise into full-size steps. A larger eps keeps the comparison about the data, not about that noise.
DDP_EXTRA = ("--ckpt.every=2", "--optim.eps=1e-2")


def _ddp_rank(rank: int, root: str, run_dir: str, out: str) -> None:
    t = train(_cfg(root, run_dir, 4, *DDP_EXTRA, "--run.tensorboard=false"))
    torch.save({k: v.detach().clone() for k, v in t.model.state_dict().items()}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_the_combined_batch(tmp_path, imgs):
    spawn_ranks(_ddp_rank, 2, (str(imgs), str(tmp_path / "ddp"), str(tmp_path)))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks disagree"
    torch.set_num_threads(1)
    single = train(_cfg(imgs, tmp_path / "single", 4, *DDP_EXTRA, "--data.batch_size=4"))
    ref = single.model.state_dict()
    worst = max((r0[k] - ref[k]).abs().max().item() for k in ref)
    assert worst <= 1e-6, f"2 ranks x batch 2 differ from 1 process x batch 4 by {worst:.2e}"
    run = tmp_path / "ddp"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # one writer: no duplicate rows
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step_000000002", "step_000000004"]
