"""Resumable, rank-sharded batch sampling.

Each epoch is a permutation drawn from ``seed + epoch``; a global batch of ``batch_size * world_size``
indices is cut from it and rank r takes the r-th slice, so a DDP run sees exactly the combined batch of a
single-process run with ``batch_size * world_size``. The position (epoch, offset) is saved in checkpoints,
which is what makes resume exact.
"""

from __future__ import annotations

import torch

__all__ = ["ShardedBatchSampler"]


class ShardedBatchSampler:
    def __init__(
        self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ):
        if num_items <= 0:
            raise ValueError("cannot sample batches from an empty dataset")
        if batch_size <= 0:
            raise ValueError(f"batch size must be > 0, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.offset = 0, 0
        self._perm: torch.Tensor | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                perm = torch.randperm(self.num_items, generator=g)
            else:
                perm = torch.arange(self.num_items)
            reps = -(-self.global_batch // self.num_items)  # tiny datasets: repeat to fill one batch
            self._perm = perm.repeat(reps) if reps > 1 else perm
        return self._perm

    def next_indices(self) -> torch.Tensor:
        """This rank's indices of the next global batch (drop-last within an epoch)."""
        perm = self._permutation()
        if self.offset + self.global_batch > len(perm):
            self.epoch, self.offset, self._perm = self.epoch + 1, 0, None
            perm = self._permutation()
        start = self.offset + self.rank * self.batch_size
        idx = perm[start : start + self.batch_size]
        self.offset += self.global_batch
        return idx

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "num_items": self.num_items,
            "global_batch": self.global_batch,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_items"] != self.num_items:
            raise ValueError(
                f"data changed since the checkpoint: {state['num_items']} items then, "
                f"{self.num_items} now; resume with the same data or start a new run dir"
            )
        if state["global_batch"] != self.global_batch:
            raise ValueError(
                f"global batch changed since the checkpoint ({state['global_batch']} then, "
                f"{self.global_batch} now); exact resume needs the same batch size x world size"
            )
        self.epoch, self.offset, self.seed, self._perm = state["epoch"], state["offset"], state["seed"], None
