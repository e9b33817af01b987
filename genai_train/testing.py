"""Helpers for the lifecycle tests every trainer has: run-directory hashes, path spellings, torchrun-like ranks."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["tree_hashes", "path_spellings", "free_port", "spawn_ranks", "rank_env", "tensorboard_scalars"]


def tree_hashes(root: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (folders included as ``<dir>``)."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def path_spellings(path: Path, cwd: Path) -> list[str]:
    """The same ``path`` spelled relative to ``cwd``, with ``./``, and absolute."""
    rel = os.path.relpath(path, cwd)
    return [rel, "./" + rel, str(path.resolve())]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> None:
    """Set the variables torchrun sets for ``rank`` of ``world`` on this machine."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    rank_env(rank, world, port)
    torch.set_num_threads(1)
    try:
        fn(rank, *args)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_ranks(fn: Callable, world: int = 2, args: tuple = ()) -> None:
    """Run ``fn(rank, *args)`` in ``world`` processes joined as torchrun would (gloo on the CPU).

    ``fn`` must be importable (a module-level function); it sees RANK/WORLD_SIZE/... in its environment.
    """
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


def tensorboard_scalars(run_dir: str | os.PathLike) -> dict[str, list[int]]:
    """``{tag: [steps]}`` of the scalars in the TensorBoard event files under ``run_dir/tb``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tb"))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
