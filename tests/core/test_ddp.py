"""DDP under gloo on the CPU: two ranks stay identical and match one process on the combined batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from genai_train.distributed import cleanup
from genai_train.lm import build_trainer

from .lm_helpers import params, tiny_cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    try:
        trainer, _ = build_trainer(tiny_cfg(Path(run_dir), steps=6, every=3, batch_size=4, ema=False))
        trainer.fit()
        trainer.close()
        torch.save(params(trainer.model), Path(out_dir) / f"rank{rank}.pt")
    finally:
        cleanup()


def test_ddp_two_ranks_match_single_process_on_combined_batch(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path / "ddp"), str(tmp_path)), nprocs=world, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"

    torch.set_num_threads(1)
    single, _ = build_trainer(tiny_cfg(tmp_path / "single", steps=6, every=3, batch_size=4 * world, ema=False))
    single.fit()
    single.close()
    ref = params(single.model)
    worst = max((r0[k] - ref[k]).abs().max().item() for k in ref)
    assert worst <= 1e-6, f"DDP differs from the single-process combined batch by {worst:.2e}"
    # only rank 0 wrote: one metrics file without duplicate steps, one checkpoint series
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (tmp_path / "ddp" / "ckpt").iterdir() if p.name.startswith("step_")) == [
        "step_000000003",
        "step_000000006",
    ]
