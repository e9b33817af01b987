"""Growth on the core run lifecycle: validate then write, paths resolved on resume, two torchrun ranks."""

import json

import pytest
import torch

from genai_train.config import ConfigError, load_config
from genai_train.testing import path_spellings, spawn_ranks, tree_hashes
from growth.hf import CheckpointFolderError
from growth.train import GrowConfig, GrowTrainer, run

from .conftest import small_checkpoint


def _args(corpus, small, run_dir, *extra) -> list[str]:
    return [
        f"--small={small}",
        "--target=layers=2,d_model=32,heads=4,ffn=64",
        f"--data.root={corpus}",
        "--data.seq_len=16",
        "--data.batch_size=4",
        "--data.val_batches=1",
        "--ligo.steps=3",
        "--ligo.warmup_steps=1",
        "--train.steps=3",
        "--run.log_every=1",
        "--eval.every=0",
        "--ckpt.every=2",
        "--run.device=cpu",
        f"--run.dir={run_dir}",
        *extra,
    ]


def _cfg(*args, **kw) -> GrowConfig:
    return load_config(GrowConfig, None, _args(*args, **kw))


def _rows(run_dir) -> list[dict]:
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_refused_resume_leaves_every_file_byte_identical(corpus, small_ckpt, tmp_path):
    run_dir = tmp_path / "r"
    run(_cfg(corpus, small_ckpt, run_dir), stop_after=4)
    before = tree_hashes(run_dir)
    with pytest.raises(ConfigError, match="target"):
        run(_cfg(corpus, small_ckpt, run_dir, "--target=layers=3,d_model=32,heads=4,ffn=64"))
    with pytest.raises(ConfigError, match="optim.name"):
        run(_cfg(corpus, small_ckpt, run_dir, "--optim.name=adam_mini"))
    assert tree_hashes(run_dir) == before


def test_missing_or_wrong_inputs_create_no_run_dir(corpus, small_ckpt, tmp_path):
    with pytest.raises(CheckpointFolderError, match="does not exist"):
        run(_cfg(corpus, tmp_path / "no_such_ckpt", tmp_path / "a"))
    with pytest.raises(ValueError, match="does not exist"):
        run(_cfg(tmp_path / "no_such_text", small_ckpt, tmp_path / "b"))
    with pytest.raises(ValueError, match="ligo.optim.name=galore projects Linear weights"):
        run(_cfg(corpus, small_ckpt, tmp_path / "c", "--ligo.optim.name=galore"))
    assert not any((tmp_path / d).exists() for d in "abc")


def test_paths_spelled_three_ways_resume_one_run(corpus, small_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    texts, smalls = path_spellings(corpus, tmp_path), path_spellings(small_ckpt, tmp_path)
    for stop, text, small in zip((2, 4, 6), texts, smalls):
        tr = GrowTrainer(_cfg(text, small, "run"))
        assert tr.step_count == stop - 2  # resumed where the previous spelling stopped
        tr.fit(stop_after=stop)
        tr.close()
    assert [r["step"] for r in _rows(tmp_path / "run") if "loss" in r] == list(range(1, 7))
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert f"root: {corpus.resolve()}" in saved and f"small: {small_ckpt.resolve()}" in saved


def _ddp_worker(rank: int, runs: list[list[str]], out: str) -> None:
    for i, args in enumerate(runs):  # one spawn for every run: starting the processes is the slow part
        tr = GrowTrainer(load_config(GrowConfig, None, args))
        tr.fit()
        torch.save(tr.model.state_dict(), f"{out}/run{i}_rank{rank}.pt")
        tr.close()


def test_two_ranks_equal_one_process_on_the_combined_batch(corpus, tmp_path):
    """Both phases under 2 gloo ranks (batch 4 each) == 1 process with batch 8, for a decoder (GPT-2) and an
    MLM encoder (BERT); rank 0 alone writes metrics, checkpoints, the HF folder and the summary."""
    archs = ("gpt2", "bert")
    smalls = [small_checkpoint(tmp_path / f"small_{arch}", arch) for arch in archs]
    runs = [_args(corpus, small, tmp_path / f"ddp_{arch}") for arch, small in zip(archs, smalls)]
    spawn_ranks(_ddp_worker, world=2, args=(runs, str(tmp_path)))
    for i, (arch, small) in enumerate(zip(archs, smalls)):
        single = GrowTrainer(_cfg(corpus, small, tmp_path / f"one_{arch}", "--data.batch_size=8"))
        single.fit()
        single.close()
        r0, r1 = (torch.load(tmp_path / f"run{i}_rank{r}.pt") for r in (0, 1))
        for k, v in single.model.state_dict().items():
            assert torch.equal(r0[k], r1[k]), (arch, k)
            # 1e-6 absolute, and relative for O(1) norm gains (float sums over 4 + 4 rows vs 8, through Adam)
            torch.testing.assert_close(r0[k], v, atol=1e-6, rtol=1e-6, msg=f"{arch} {k}")
        ddp = tmp_path / f"ddp_{arch}"
        rows = [r for r in _rows(ddp) if "loss" in r]
        assert [r["step"] for r in rows] == list(range(1, 7))  # one row a step: only rank 0 logs
        assert [r["phase"] for r in rows] == ["ligo"] * 3 + ["train"] * 3
        steps = sorted(p.name for p in (ddp / "ckpt").iterdir() if p.name.startswith("step"))
        assert steps == ["step_000000002", "step_000000004", "step_000000006"]
        assert (ddp / "hf" / "model.safetensors").exists()
        assert json.loads((ddp / "summary.json").read_text())["step"] == 6


@pytest.mark.parametrize(
    "flags",
    [
        ["--run.precision=bf16"],
        ["--optim.name=galore", "--optim.rank=4", "--optim.target=all_linear"],
        ["--ligo.optim.name=adam_mini", "--optim.name=apollo_mini"],
    ],
)
def test_precision_and_core_optimizers_are_accepted(corpus, small_ckpt, tmp_path, flags):
    out = run(
        _cfg(corpus, small_ckpt, tmp_path / "r", "--ligo.steps=1", "--ligo.warmup_steps=0", "--train.steps=1", *flags)
    )
    assert out["step"] == 2 and out["val_loss"] < 10


def test_grow_writes_tensorboard_scalars(corpus, small_ckpt, tmp_path):
    from genai_train.testing import tensorboard_scalars

    run(_cfg(corpus, small_ckpt, tmp_path / "r", "--run.tensorboard=true"))
    scalars = tensorboard_scalars(tmp_path / "r")
    assert scalars["loss"] == [1, 2, 3, 4, 5, 6] and "val_loss" in scalars


def test_fp16_is_refused_before_anything_is_written(corpus, small_ckpt, tmp_path):
    with pytest.raises(ValueError, match="run.precision=fp16 needs loss scaling"):
        run(_cfg(corpus, small_ckpt, tmp_path / "r", "--run.precision=fp16"))
    assert not (tmp_path / "r").exists()
