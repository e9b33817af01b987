"""The per-step patch batches drawn from the cached image tensor of :mod:`diffusion.data`."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from diffusion.patches import PatchConfig, batch_multiplier, draw_patch_size, random_crops
from genai_train.data import ShardedBatchSampler

if TYPE_CHECKING:  # diffusion.data re-exports this module's classes, so no import of it at run time
    from diffusion.data import DataConfig


class PatchBatch(NamedTuple):
    """One micro-batch: patches [B, C, P, P], coordinates [B, 2, P, P], and where its rows sit in the step's
    global batch of ``n_global`` (all ranks): ``take`` [B]; ``labels`` [B] class indices, or None."""

    patches: Tensor
    pos: Tensor
    take: Tensor
    n_global: int
    labels: Tensor | None = None


class PatchBatches:
    """The engine's batch source: each call draws one patch size, then `mul` base batches of random crops.

    Returns a :class:`PatchBatch`. Every random stream (patch size, flips, crops, and the noise levels and
    noise the loss draws) is seeded identically on every rank and drawn for the step's whole global batch;
    each rank keeps the rows of its own images (``PatchBatch.take``), so N ranks with batch B train exactly
    like one process with batch N*B. All state (sampler position, both generators, call count) is saved, so
    resume is exact.
    """

    def __init__(
        self,
        images: Tensor,
        cfg: DataConfig,
        patch: PatchConfig,
        total_calls: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        labels: Tensor | None = None,
    ):
        self.images = images  # [N, C, R, R]
        self.labels = labels  # [N] int64 or None
        self.cfg, self.patch, self.total_calls = cfg, patch, max(total_calls, 1)
        self.resolution = images.shape[-1]
        self.sampler = ShardedBatchSampler(images.shape[0], cfg.batch_size, seed, rank, world_size)
        self.size_gen = torch.Generator().manual_seed(seed + 1_000_003)
        self.crop_gen = torch.Generator().manual_seed(seed + 2_000_003)
        self.rank, self.world_size = rank, world_size
        self.calls = 0
        self.patches_seen = 0  # Patch Diffusion's progress unit: a patch counts as an image
        self.pixels_seen = 0
        self.last_patch = self.resolution

    def next_batch(self, device: torch.device) -> PatchBatch:
        size = draw_patch_size(self.resolution, self.patch, self.size_gen, self.calls / self.total_calls)
        mul = batch_multiplier(self.resolution, size, self.patch.batch_mul)
        idx = torch.cat([self.sampler.next_indices() for _ in range(mul)])
        b, w = self.cfg.batch_size, self.world_size
        # this rank's rows of the global batch: chunk j of the sampler holds ranks' slices of b in rank order
        take = (torch.arange(mul)[:, None] * b * w + self.rank * b + torch.arange(b)).flatten()  # [B*mul]
        n_global = b * w * mul
        imgs = self.images[idx]  # [B*mul, C, R, R]
        if self.cfg.hflip:
            flip = torch.rand(n_global, generator=self.crop_gen)[take] < 0.5
            imgs = torch.where(flip[:, None, None, None], imgs.flip(-1), imgs)
        patches, pos, _ = random_crops(imgs, size, self.crop_gen, take, n_global)
        self.calls += 1
        self.patches_seen += len(idx)
        self.pixels_seen += len(idx) * size * size
        self.last_patch = size
        labels = None if self.labels is None else self.labels[idx].to(device, non_blocking=True)  # [B*mul]
        return PatchBatch(
            patches.to(device, non_blocking=True), pos.to(device, non_blocking=True), take, n_global, labels
        )

    def state_dict(self) -> dict:
        return {
            "sampler": self.sampler.state_dict(),
            "size_gen": self.size_gen.get_state(),
            "crop_gen": self.crop_gen.get_state(),
            "calls": self.calls,
            "patches_seen": self.patches_seen,
            "pixels_seen": self.pixels_seen,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.size_gen.set_state(state["size_gen"])
        self.crop_gen.set_state(state["crop_gen"])
        self.calls = int(state["calls"])
        self.patches_seen = int(state.get("patches_seen", 0))
        self.pixels_seen = int(state.get("pixels_seen", 0))
