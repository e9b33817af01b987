"""Patch Diffusion training: image folder -> coordinate-conditioned random patches -> EDM loss -> UNet2DModel.

Patch Diffusion: Faster and More Data-Efficient Training of Diffusion Models (Wang et al., NeurIPS 2023),
https://arxiv.org/abs/2304.12526, on EDM (Karras et al. 2022, https://arxiv.org/abs/2206.00364).
The loop itself is the core's ``Trainer`` (optimizer, LR warm-up, EMA, checkpoints with exact resume,
logging, DDP); this file builds the pieces and adds the EMA ramp-up and the sample grid every N steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from diffusion.data import DataConfig, PatchBatch, PatchBatches, load_image_folder
from diffusion.edm import EDMConfig, edm_loss, sample_sigma
from diffusion.model import ModelConfig, PatchEDM, build_unet, check_patch_sizes, count_params
from diffusion.patches import PatchConfig, mean_batch_multiplier, patch_choices
from diffusion.sample import SampleConfig, generate, image_grid
from genai_train.checkpoint import CheckpointConfig
from genai_train.ema import decay_from_half_life
from genai_train.engine import EMAConfig, LoopConfig, RunConfig, Trainer
from genai_train.optim import OptimConfig
from genai_train.schedules import ScheduleConfig
from genai_train.seed import seed_everything


@dataclass
class PreviewConfig:
    """Sample grids written while training."""

    every: int = field(default=1000, metadata={"help": "write a sample grid every N optimizer steps (0 = never)"})
    n: int = field(default=16, metadata={"help": "images in the grid"})
    steps: int = field(default=18, metadata={"help": "Heun steps for the grid"})
    ema_rampup: float = field(
        default=0.05,
        metadata={"help": "EMA half-life ramp-up: min(half_life, ratio * step) as in EDM (0 = no ramp-up)"},
    )

    def __post_init__(self) -> None:
        if self.every < 0 or self.n < 1 or self.steps < 1:
            raise ValueError("preview.every must be >= 0, preview.n and preview.steps >= 1")
        if self.ema_rampup < 0:
            raise ValueError(f"preview.ema_rampup must be >= 0, got {self.ema_rampup}")


# Sections whose paper defaults differ from the core's: subclasses, so a YAML file or flag that sets one
# field of a section keeps the other Patch Diffusion defaults (a default_factory would be bypassed).
@dataclass
class EDMOptimConfig(OptimConfig):
    """Optimizer (EDM: Adam, betas (0.9, 0.999), eps 1e-8; Patch Diffusion CelebA-64 lr 2e-4)."""

    lr: float = field(default=2e-4, metadata={"help": "learning rate (Patch Diffusion CelebA-64: 2e-4)"})


@dataclass
class EDMScheduleConfig(ScheduleConfig):
    """LR schedule: EDM warms the LR up linearly, then keeps it constant."""

    kind: Literal["cosine", "linear", "constant"] = field(
        default="constant", metadata={"help": "decay after warm-up: constant (EDM), cosine or linear"}
    )
    warmup_steps: int = field(default=1000, metadata={"help": "linear LR warm-up in optimizer steps"})


@dataclass
class EDMEMAConfig(EMAConfig):
    """EMA of the weights by half-life (EDM: 0.5 Mimg, about 500 steps at batch 512 x 1.9)."""

    half_life_steps: float | None = field(default=500.0, metadata={"help": "EMA half-life in optimizer steps"})


@dataclass
class DiffusionConfig:
    """`genai-train diffusion train`: everything a run needs (paper defaults, CelebA-64 recipe)."""

    data: DataConfig = field(default_factory=DataConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    edm: EDMConfig = field(default_factory=EDMConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    optim: EDMOptimConfig = field(default_factory=EDMOptimConfig)
    schedule: EDMScheduleConfig = field(default_factory=EDMScheduleConfig)
    ema: EDMEMAConfig = field(default_factory=EDMEMAConfig)
    # EDM clips no gradients
    train: LoopConfig = field(default_factory=lambda: LoopConfig(steps=100_000, grad_clip=0.0))
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/diffusion"))

    def __post_init__(self) -> None:
        # The UNet must take every patch side without rounding (see model.check_patch_sizes).
        try:
            sizes = [s for s, _ in patch_choices(self.data.resolution, self.patch.p)]
        except ValueError as e:
            raise ValueError(f"data.resolution={self.data.resolution}: {e}") from None
        check_patch_sizes(sizes, self.data.resolution, self.model.downsample_factor, len(self.model.block_out_channels))


def diffusion_loss(edm: EDMConfig):
    """loss_fn(model, PatchBatch) for the engine: lambda-weighted squared error, summed over C x P x P
    pixels and averaged over the patches (EDM / Patch Diffusion convention). Sigma and noise come from the
    global torch RNG (the same on every rank; the checkpoints save it), drawn for the step's global batch,
    of which this rank keeps its own rows."""

    def loss_fn(model: nn.Module, batch: PatchBatch) -> Tensor:
        y, pos, take, n = batch  # [B, C, P, P], [B, 2, P, P], [B], global batch size
        sigma = sample_sigma(n, edm, device=y.device)  # [n]
        noise = torch.randn((n, *y.shape[1:]), dtype=y.dtype, device=y.device)  # [n, C, P, P]
        if n != len(y):
            take = take.to(y.device)
            sigma, noise = sigma[take], noise[take]
        per_sample = edm_loss(lambda x, s: model(x, s, pos), y, sigma, noise, edm.sigma_data)  # [B]
        return per_sample.mean()

    return loss_fn


def build_model(cfg: DiffusionConfig) -> PatchEDM:
    return PatchEDM(build_unet(cfg.model, cfg.data.channels, cfg.data.resolution), cfg.edm.sigma_data)


class EMARampUp:
    """EDM's EMA ramp-up: the half-life is min(half_life, ratio * step), so early averages do not hold on
    to the random initial weights. Sets the decay the next update uses; the decay is saved with the EMA."""

    def __init__(self, half_life_steps: float, ratio: float):
        self.half_life, self.ratio = half_life_steps, ratio

    def decay_for(self, step: int) -> float:
        hl = self.half_life if self.ratio <= 0 else min(self.half_life, self.ratio * max(step, 1))
        return decay_from_half_life(max(hl, 1e-8))

    def __call__(self, trainer: Trainer, step: int) -> None:
        if trainer.ema is not None:
            trainer.ema.decay = self.decay_for(step + 1)


class ProgressLog:
    """Logs Patch Diffusion's own progress units on logging steps: patches seen (a patch counts as an image,
    the paper's kimg) and pixels seen, so runs with different p compare at equal steps, images or pixels."""

    def __call__(self, trainer: Trainer, step: int) -> None:
        if step % trainer.run_cfg.log_every and step != trainer.loop.steps:
            return
        b = trainer.batches
        trainer.logger.log(step, kimg=b.patches_seen / 1e3, mpix=b.pixels_seen / 1e6, patch=b.last_patch)


class PreviewGrid:
    """Writes and logs a sample grid (EMA weights when there is an EMA) every ``preview.every`` steps."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg

    def __call__(self, trainer: Trainer, step: int) -> None:
        every = self.cfg.preview.every
        if not trainer.is_main or every <= 0 or (step % every and step != trainer.loop.steps):
            return
        model = trainer.ema.module if trainer.ema is not None else trainer.model
        scfg = SampleConfig(steps=self.cfg.preview.steps, batch_size=self.cfg.preview.n)
        imgs = generate(
            model,
            self.cfg.preview.n,
            scfg,
            self.cfg.edm,
            self.cfg.data.resolution,
            seed=self.cfg.run.seed,
            device=trainer.device,
        )
        trainer.logger.image("samples", step, image_grid(imgs))


def make_trainer(cfg: DiffusionConfig, images: Tensor | None = None) -> Trainer:
    """Build data, model and the core Trainer (resuming from ``run.dir`` when it holds a checkpoint)."""
    # Rank and world size as torchrun sets them; the Trainer joins the process group on its device.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if images is None:
        images, _ = load_image_folder(cfg.data, log=print if rank == 0 else (lambda *_: None))
    if images.shape[1] != cfg.data.channels or images.shape[-1] != cfg.data.resolution:
        raise ValueError(
            f"images are {tuple(images.shape[1:])}, config wants "
            f"{cfg.data.channels}x{cfg.data.resolution}x{cfg.data.resolution}"
        )
    seed_everything(cfg.run.seed)  # the model's initial weights depend only on the seed
    model = build_model(cfg)
    batches = PatchBatches(
        images,
        cfg.data,
        cfg.patch,
        cfg.train.steps * cfg.train.grad_accum,
        seed=cfg.run.seed,
        rank=rank,
        world_size=world,
    )
    callbacks = []
    ramp = None
    if cfg.ema.half_life_steps is not None:
        ramp = EMARampUp(cfg.ema.half_life_steps, cfg.preview.ema_rampup)
        callbacks.append(ramp)
    callbacks += [ProgressLog(), PreviewGrid(cfg)]
    trainer = Trainer(
        task="diffusion",
        model=model,
        loss_fn=diffusion_loss(cfg.edm),
        batches=batches,
        config=cfg,
        shape_keys=("model", "data.channels", "data.resolution"),
        callbacks=callbacks,
    )
    if ramp is not None and trainer.ema is not None and trainer.resumed_from is None:
        trainer.ema.decay = ramp.decay_for(1)
    if trainer.is_main and trainer.resumed_from is None:
        mul = mean_batch_multiplier(cfg.data.resolution, cfg.patch)
        trainer.logger.info(
            f"Patch Diffusion: {images.shape[0]} images at {cfg.data.resolution}px, patch sizes "
            f"{[s for s, _ in patch_choices(cfg.data.resolution, cfg.patch.p)]} (p={cfg.patch.p}, "
            f"{cfg.patch.schedule}), mean batch x{mul:.2f}; UNet {count_params(model) / 1e6:.2f}M params "
            f"on {trainer.device}"
        )
    return trainer


def train(cfg: DiffusionConfig, images: Tensor | None = None) -> Trainer:
    """Run (or resume) training to ``train.steps``; returns the finished Trainer."""
    trainer = make_trainer(cfg, images)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


def load_run(
    run_dir: str | Path, use_ema: bool = True, map_location: str | torch.device = "cpu"
) -> tuple[PatchEDM, DiffusionConfig, int]:
    """(model with the newest checkpoint's EMA (or raw) weights, the run's config, step) from a run folder."""
    from genai_train.checkpoint import Checkpointer
    from genai_train.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(
            f"{run_dir}: not a diffusion run folder (no config.yaml); pass --ckpt a folder "
            f"written by `genai-train diffusion train` or by `export`"
        )
    cfg = load_config(DiffusionConfig, run_dir / "config.yaml")
    found = Checkpointer(run_dir / "ckpt", task="diffusion").load_latest(map_location=map_location)
    if found is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint under ckpt/; train longer or pass another run")
    step, state = found
    model = build_model(cfg)
    weights = state["ema"]["module"] if (use_ema and "ema" in state) else state["model"]
    model.load_state_dict(weights)
    return model.eval(), cfg, step
