"""HALoS as real processes on gloo: 2 regions x 2 workers with the link delays of configs/dist/two_regions.yaml."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import torch
import torch.multiprocessing as mp

from genai_train.config import ConfigError
from genai_train.dist.config import DistConfig, HalosConfig
from genai_train.testing import free_port, rank_env

from .helpers import TWO_REGIONS, dist_cfg

WORLD = 7  # 1 global server + 2 x (1 local server + 2 workers)


def _rank(rank: int, port: int, run_dir: str, steps: int, victim: int, die_after_s: float) -> None:
    rank_env(rank, WORLD, port)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    import genai_train.dist.runner as runner
    from genai_train.distributed import cleanup
    from genai_train.lm import train

    if rank == victim:  # dies (like a killed process: no clean-up) once it has trained a while
        serve = runner.serve

        def serve_then_die(*args, **kwargs):
            threading.Timer(die_after_s, os._exit, args=(1,)).start()
            return serve(*args, **kwargs)

        runner.serve = serve_then_die
    dcfg = DistConfig(algo="halos", regions=TWO_REGIONS, eval_every_s=0.5, halos=HalosConfig(push_every=4))
    try:
        train(dist_cfg(run_dir, dcfg, steps=steps))
    finally:
        cleanup()


def _run(tmp_path, steps: int, victim: int = -1, die_after_s: float = 0.0) -> tuple[dict, list[int]]:
    ctx = mp.get_context("fork")  # no re-import of torch in 7 processes on 2 cores
    port, run_dir = free_port(), str(tmp_path / "run")
    procs = [ctx.Process(target=_rank, args=(r, port, run_dir, steps, victim, die_after_s)) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    return json.loads((tmp_path / "run" / "result.json").read_text()), codes


@pytest.mark.slow
def test_two_regions_of_two_workers_train_with_link_delays_and_resume(tmp_path):
    result, codes = _run(tmp_path, steps=60)
    assert codes == [0] * WORLD
    first, last = result["curve"][0], result["curve"][-1]
    assert result["global_steps"] >= 60 and not result["simulated"]
    assert last[2] < first[2] - 0.5, f"the global model's validation loss did not fall: {result['curve']}"
    # rank 0's checkpoint holds every server's state: its own and each region's (model, momentum, counters)
    ckpt = sorted((tmp_path / "run" / "ckpt").glob("step_*"))[-1]
    server = torch.load(ckpt / "state.pt", weights_only=True)["server"]
    assert sorted(server["regions"]) == ["1", "4"] and all(len(p) == 5 for p in server["regions"].values())
    applied = sum(int(p[4][4]) for p in server["regions"].values())  # worker steps the regions applied
    assert applied >= result["global_steps"] * 4
    # a longer budget continues from every server's saved state
    again, codes = _run(tmp_path, steps=90)
    assert codes == [0] * WORLD
    assert again["global_steps"] >= 90 and again["curve"][0][1] >= 60  # it went on from the saved count
    assert again["val_loss"] < result["curve"][0][2] - 0.5


@pytest.mark.slow
def test_killing_a_worker_does_not_stop_training(tmp_path):
    victim = 3  # region 0's second worker
    result, codes = _run(tmp_path, steps=60, victim=victim, die_after_s=1.0)
    assert codes[victim] == 1 and [c for r, c in enumerate(codes) if r != victim] == [0] * (WORLD - 1)
    assert result["global_steps"] >= 60, "the run stopped before its budget"
    assert result["curve"][-1][2] < result["curve"][0][2] - 0.5


def test_world_size_is_checked_against_the_regions_file_before_anything_is_written(tmp_path, monkeypatch):
    from genai_train.lm import train

    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = dist_cfg(tmp_path / "never", DistConfig(algo="halos", regions=TWO_REGIONS))
    with pytest.raises(ConfigError, match="needs 7 processes"):
        train(cfg)
    assert not (tmp_path / "never").exists()
