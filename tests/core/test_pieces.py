"""Closed forms of the small shared pieces: EMA half-life, LR schedule, sharded sampler, RNG capture."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from genai_train.data import ShardedBatchSampler
from genai_train.ema import EMA
from genai_train.schedules import ScheduleConfig, lr_factor
from genai_train.seed import rng_state, set_rng_state


def test_ema_half_life_halves_the_weight_of_the_start():
    model = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, half_life_steps=10)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(10):
        ema.update(model)
    # after one half-life the initial value (0) keeps weight 1/2: ema = 0.5 * 0 + 0.5 * 1
    assert torch.allclose(ema.module.weight, torch.full((2, 2), 0.5), atol=1e-6)


def test_ema_needs_exactly_one_of_decay_and_half_life():
    with pytest.raises(ValueError, match="exactly one"):
        EMA(torch.nn.Linear(1, 1), decay=0.9, half_life_steps=3)


def test_warmup_then_cosine_closed_form():
    cfg = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(50, 110, ScheduleConfig(kind="constant", warmup_steps=10)) == 1.0


def test_sharded_sampler_ranks_partition_the_global_batch_and_resume():
    full = ShardedBatchSampler(10, 4, seed=1)
    ranks = [ShardedBatchSampler(10, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):  # crosses epoch boundaries
        assert torch.equal(full.next_indices(), torch.cat([s.next_indices() for s in ranks]))
    state = full.state_dict()
    expected = [full.next_indices() for _ in range(3)]
    again = ShardedBatchSampler(10, 4, seed=1)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, [again.next_indices() for _ in range(3)]))
    with pytest.raises(ValueError, match="global batch changed"):
        ShardedBatchSampler(10, 2, seed=1).load_state_dict(state)


def test_rng_state_round_trip_restores_every_generator():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_first_crossing_interpolates_between_evaluation_points():
    from genai_train.bench import first_crossing

    curve = [(10.0, 214.0), (20.0, 195.2), (30.0, 186.1), (40.0, 161.3)]
    assert first_crossing(curve, 184.4) == pytest.approx(30.0 + (186.1 - 184.4) / (186.1 - 161.3) * 10.0)
    assert first_crossing(curve, 195.2) == pytest.approx(20.0)  # reached exactly at a point
    assert first_crossing(curve, 300.0) == 10.0  # already below at the first point
    assert first_crossing(curve, 100.0) is None  # never reached


def test_commit_stamp_flags_changed_code_but_not_the_results_being_written(tmp_path, monkeypatch):
    import subprocess

    from genai_train import bench

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "x.png").write_bytes(b"old figure")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    head = git("rev-parse", "--short", "HEAD")
    monkeypatch.setattr(bench, "_git", git)
    (tmp_path / "benchmarks" / "results" / "x.png").write_bytes(b"the figure a benchmark just drew")
    assert bench.environment()["commit"] == head  # its own output is not a change to the code it measured
    (tmp_path / "code.py").write_text("x = 2\n")
    assert bench.environment()["commit"] == f"{head}+changes"
