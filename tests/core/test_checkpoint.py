"""Checkpointer: atomic saves, keep-last-k, damaged checkpoints skipped, foreign folders left alone."""

from __future__ import annotations

import json

import pytest
import torch

from genai_train.checkpoint import RUN_MARKER, Checkpointer, CheckpointError, RunDirError
from genai_train.run import check_run_dir


def _state(v: float) -> dict:
    return {"w": torch.full((4,), v), "step": int(v)}


def test_keep_last_k_and_latest(tmp_path):
    ck = Checkpointer(tmp_path, keep=2, task="t")
    for s in (1, 2, 3):
        ck.save(s, _state(s))
    assert ck.complete_steps() == [2, 3]
    step, state = ck.load_latest()
    assert step == 3 and torch.equal(state["w"], torch.full((4,), 3.0))


def test_corrupt_newest_checkpoint_falls_back_with_warning(tmp_path):
    ck = Checkpointer(tmp_path, keep=3, task="t")
    ck.save(1, _state(1))
    newest = ck.save(2, _state(2))
    data = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(data[: len(data) // 2])  # truncated, marker still present
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        step, state = ck.load_latest()
    assert step == 1 and torch.equal(state["w"], torch.full((4,), 1.0))


def test_checkpoint_without_marker_is_ignored(tmp_path):
    ck = Checkpointer(tmp_path, keep=3, task="t")
    ck.save(1, _state(1))
    partial = ck.save(2, _state(2))
    (partial / "COMPLETE").unlink()
    assert ck.load_latest()[0] == 1


def test_checkpoint_of_another_task_is_refused(tmp_path):
    Checkpointer(tmp_path, task="diffusion").save(1, _state(1))
    with pytest.raises(CheckpointError, match="written by task 'diffusion'"):
        Checkpointer(tmp_path, task="lm").load_latest()


def test_saved_state_loads_with_weights_only(tmp_path):
    path = Checkpointer(tmp_path, task="t").save(5, _state(5))
    meta = json.loads((path / "COMPLETE").read_text())
    assert meta["step"] == 5 and meta["task"] == "t"
    assert torch.load(path / "state.pt", weights_only=True)["step"] == 5


def test_run_dir_that_is_not_ours_is_refused_and_untouched(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("important")
    with pytest.raises(RunDirError, match="not created by genai-train"):
        check_run_dir(foreign, "lm", "auto")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def _ours(run, task: str):
    run.mkdir()
    (run / RUN_MARKER).write_text(json.dumps({"task": task}))
    return run


def test_run_dir_of_another_task_is_refused(tmp_path):
    _ours(tmp_path / "r", "diffusion")
    assert check_run_dir(tmp_path / "r", "diffusion", "auto") and not check_run_dir(tmp_path / "new", "lm", "auto")
    with pytest.raises(RunDirError, match="belongs to a 'diffusion' run"):
        check_run_dir(tmp_path / "r", "lm", "auto")


def test_resume_never_refuses_to_overwrite_checkpoints(tmp_path):
    run = _ours(tmp_path / "r", "lm")
    Checkpointer(run / "ckpt", task="lm").save(1, _state(1))
    with pytest.raises(RunDirError, match="ckpt.resume=never"):
        check_run_dir(run, "lm", "never")
