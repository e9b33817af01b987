"""Patch Diffusion training: image folder -> coordinate-conditioned random patches -> EDM loss -> UNet2DModel.

Patch Diffusion: Faster and More Data-Efficient Training of Diffusion Models (Wang et al., NeurIPS 2023),
https://arxiv.org/abs/2304.12526, on EDM (Karras et al. 2022, https://arxiv.org/abs/2206.00364).
The loop itself is the core's ``Trainer`` (optimizer, LR warm-up, EMA, checkpoints with exact resume,
logging, DDP); this file builds the pieces and adds the EMA ramp-up and the sample grid every N steps.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from diffusion.data import DataConfig, PatchBatch, PatchBatches, load_image_folder
from diffusion.edm import EDMConfig, edm_loss, sample_sigma
from diffusion.model import (
    ModelConfig,
    PatchEDM,
    build_unet,
    check_patch_setting,
    count_params,
    suggest_resolution,
)
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
        # The UNet must take every patch side without rounding; the error names a setting that works.
        down, levels = self.model.downsample_factor, len(self.model.block_out_channels)
        if not self.model.vae:
            check_patch_setting(self.data.resolution, self.patch.p, down, levels)
            return
        from diffusion.latent import latent_shape, vae_config, vae_factor

        f = vae_factor(vae_config(self.model.vae))
        _, side = latent_shape(self.model.vae, None, self.data.resolution)
        try:
            check_patch_setting(side, self.patch.p, down, levels)
        except ValueError as e:
            good = suggest_resolution(side, self.patch.p, down) * f
            raise ValueError(
                f"latent side {side} (data.resolution={self.data.resolution} / the autoencoder's {f}): {e}; in "
                f"pixels: --data.resolution={good}"
            ) from None

    @property
    def model_shape(self) -> tuple[int, int]:
        """(channels, side) of what the UNet denoises: the images, or the autoencoder's latents."""
        channels = self.data.channels if self.data.channels != "auto" else None
        if not self.model.vae:
            return channels, self.data.resolution
        from diffusion.latent import latent_shape

        return latent_shape(self.model.vae, channels, self.data.resolution)


class PixelLoss:
    """The loss per pixel for display: each micro-batch's loss divided by its C x P x P (the patch size changes
    from step to step, so the summed loss jumps with it). Kept as device tensors; read on logging steps only."""

    def __init__(self):
        self.values: list[Tensor] = []

    def add(self, loss: Tensor, pixels: int) -> None:
        self.values.append(loss.detach().float() / pixels)

    def pop(self) -> float | None:
        """The mean over the micro-batches since the last call (host sync), or None."""
        out = torch.stack(self.values).mean().item() if self.values else None
        self.values = []
        return out


def diffusion_loss(
    edm: EDMConfig,
    label_dropout: float = 0.0,
    null_class: int = 0,
    pixel_loss: PixelLoss | None = None,
):
    """loss_fn(model, PatchBatch) for the engine: lambda-weighted squared error, summed over C x P x P
    pixels and averaged over the patches (EDM / Patch Diffusion convention). Sigma and noise come from the
    global torch RNG (the same on every rank; the checkpoints save it), drawn for the step's global batch,
    of which this rank keeps its own rows. A class-conditional batch then draws the label dropout the same
    way: a dropped label becomes ``null_class``, so the unconditional prediction is trained too.
    (Mixed precision is the engine's: it runs this under bf16 autocast when run.precision asks for it.)"""

    def loss_fn(model: nn.Module, batch: PatchBatch) -> Tensor:
        y, pos, take, n, labels = batch  # [B, C, P, P], [B, 2, P, P], [B], global batch size, [B] or None
        sigma = sample_sigma(n, edm, device=y.device)  # [n]
        noise = torch.randn((n, *y.shape[1:]), dtype=y.dtype, device=y.device)  # [n, C, P, P]
        drop = torch.rand(n, device=y.device) < label_dropout if labels is not None else None  # [n]
        if n != len(y):
            take = take.to(y.device)
            sigma, noise = sigma[take], noise[take]
            drop = drop[take] if drop is not None else None
        if labels is not None:
            labels = torch.where(drop, torch.full_like(labels, null_class), labels)  # [B]
        per_sample = edm_loss(lambda x, s: model(x, s, pos, labels), y, sigma, noise, edm.sigma_data)  # [B]
        loss = per_sample.mean()
        if pixel_loss is not None:
            pixel_loss.add(loss, y[0].numel())
        return loss

    return loss_fn


def build_model(cfg: DiffusionConfig, classes: list[str] | None = None) -> PatchEDM:
    if cfg.data.channels == "auto":
        raise ValueError("data.channels=auto must be resolved from the images before the model is built")
    channels, side = cfg.model_shape
    unet = build_unet(cfg.model, channels, side, num_classes=len(classes or []))
    return PatchEDM(unet, cfg.edm.sigma_data, classes)


def attach_vae(model: PatchEDM, cfg: DiffusionConfig, vae=None):
    """Latent runs: let ``generate`` decode the model's samples with the frozen VAE (loaded unless given)."""
    if not cfg.model.vae:
        return None
    from diffusion.latent import LatentDecoder, load_vae

    vae = vae if vae is not None else load_vae(cfg.model.vae)
    model.latent_decoder = LatentDecoder(vae, cfg.model.vae)  # a plain attribute: not trained, not saved
    return vae


class ClassNames:
    """The class list of a class-conditional run, saved with every checkpoint (index = label)."""

    def __init__(self, classes: list[str]):
        self.classes = list(classes)

    def state_dict(self) -> dict:
        return {"classes": list(self.classes)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["classes"]) != self.classes:
            raise ValueError(f"the run was trained on classes {state['classes']}, the data now has {self.classes}")


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
    the paper's kimg), pixels seen, the step's patch size and the loss per pixel (also shown in the progress
    bar), so runs with different p compare at equal steps, images or pixels. After the second step it says
    when the model is too large for the CPU."""

    slow_cpu_s = 2.0  # seconds per step above which a CPU run gets a hint ...
    large_params = 4_500_000  # ... if its UNet is larger than emoji32_cpu.yaml's (3.9M) or R > 32

    def __init__(self, pixel_loss: PixelLoss, cfg: DiffusionConfig):
        self.pixel_loss, self.cfg = pixel_loss, cfg
        self.bar = None  # the engine's tqdm bar (captured when fit() opens it)
        self.t0: float | None = None
        self.timing_step: int | None = None

    def progress(self, open_bar):
        """Wraps the logger's ``progress`` so the bar the engine opens can show the loss per pixel."""

        def opened(*args, **kwargs):
            self.bar = open_bar(*args, **kwargs)
            self.t0, self.timing_step = time.perf_counter(), None
            return self.bar

        return opened

    def __call__(self, trainer: Trainer, step: int) -> None:
        if self.t0 is not None:  # timed over the second step: the first carries one-time start-up costs
            now = time.perf_counter()
            seconds, self.t0 = now - self.t0, (now if self.timing_step is None else None)
            self.timing_step = step
            large = count_params(trainer.model) > self.large_params or self.cfg.data.resolution > 32
            if self.t0 is None and trainer.device.type == "cpu" and seconds > self.slow_cpu_s and large:
                left = (trainer.loop.steps - step) * seconds / 3600
                trainer.logger.info(
                    f"hint: one step took {seconds:.1f} s on the CPU (about {left:.1f} h for the remaining "
                    f"{trainer.loop.steps - step} steps); this {count_params(trainer.model) / 1e6:.1f}M-parameter "
                    f"UNet at {self.cfg.data.resolution}px is large for a CPU: try --config "
                    "configs/diffusion/emoji32_cpu.yaml (or a GPU)"
                )
        if step % trainer.run_cfg.log_every and step != trainer.loop.steps:
            self.pixel_loss.values = []  # only logging steps read it (no host sync elsewhere)
            return
        b = trainer.batches
        px = self.pixel_loss.pop()
        row = {"kimg": b.patches_seen / 1e3, "mpix": b.pixels_seen / 1e6, "patch": b.last_patch}
        if px is not None:
            row["loss_px"] = px
            if self.bar is not None:
                self.bar.set_postfix(loss_px=f"{px:.4f}", patch=b.last_patch)
        trainer.logger.log(step, **row)


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
            self.cfg.preview.n,  # a class-conditional model: the classes in turn
            scfg,
            self.cfg.edm,
            self.cfg.model_shape[1],  # latent runs: the latent side (generate decodes)
            seed=self.cfg.run.seed,
            device=trainer.device,
        )
        trainer.logger.image("samples", step, image_grid(imgs))


def make_trainer(
    cfg: DiffusionConfig,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    classes: list[str] | None = None,
) -> Trainer:
    """Build data, model and the core Trainer (resuming from ``run.dir`` when it holds a checkpoint).

    ``images`` [N, C, R, R] in [-1, 1] (and ``labels`` [N] with ``classes``) replace reading ``data.root``.
    ``data.channels=auto`` is resolved from the images before the run's config is saved.
    """
    # Rank and world size as torchrun sets them; the Trainer joins the process group on its device.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if images is None:
        log = print if rank == 0 else (lambda *_: None)
        images, report = load_image_folder(cfg.data, log=log, seed=cfg.run.seed)
        labels, classes = report.labels, report.classes
    classes = list(classes or [])
    if cfg.data.channels == "auto":
        cfg = replace(cfg, data=replace(cfg.data, channels=images.shape[1]))
    if images.shape[1] != cfg.data.channels or images.shape[-1] != cfg.data.resolution:
        raise ValueError(
            f"images are {tuple(images.shape[1:])}, config wants "
            f"{cfg.data.channels}x{cfg.data.resolution}x{cfg.data.resolution}"
        )
    if bool(classes) != (labels is not None):
        raise ValueError("give labels and class names together (or neither)")
    latent_line, vae = None, None
    if cfg.model.vae:  # encode the dataset once; the patches are cut from the latents
        from diffusion.latent import encode, latent_shape, load_vae

        latent_shape(cfg.model.vae, cfg.data.channels, cfg.data.resolution)  # refuses before anything loads
        vae = load_vae(cfg.model.vae)
        pixels = tuple(images.shape[1:])
        images = encode(vae, images)  # [N, c, R/f, R/f]
        latent_line = (
            f"latent Patch Diffusion: {images.shape[0]} images {pixels} encoded once by {cfg.model.vae} into "
            f"latents {tuple(images.shape[1:])}; patches and coordinates on the latent grid"
        )
    seed_everything(cfg.run.seed)  # the model's initial weights depend only on the seed
    model = build_model(cfg, classes)
    if cfg.model.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    batches = PatchBatches(
        images,
        cfg.data,
        cfg.patch,
        cfg.train.steps * cfg.train.grad_accum,
        seed=cfg.run.seed,
        rank=rank,
        world_size=world,
        labels=labels,
    )
    pixel_loss = PixelLoss()
    progress = ProgressLog(pixel_loss, cfg)
    callbacks = []
    ramp = None
    if cfg.ema.half_life_steps is not None:
        ramp = EMARampUp(cfg.ema.half_life_steps, cfg.preview.ema_rampup)
        callbacks.append(ramp)
    callbacks += [progress, PreviewGrid(cfg)]
    trainer = Trainer(
        task="diffusion",
        model=model,
        loss_fn=diffusion_loss(
            cfg.edm,
            label_dropout=cfg.model.label_dropout if classes else 0.0,
            null_class=model.null_class,
            pixel_loss=pixel_loss,
        ),
        batches=batches,
        config=cfg,
        shape_keys=("model", "data.channels", "data.resolution", "data.labels"),
        task_state=ClassNames(classes) if classes else None,
        callbacks=callbacks,
    )
    trainer.logger.progress = progress.progress(trainer.logger.progress)
    if cfg.model.vae:
        for m in (trainer.model, trainer.ema.module if trainer.ema is not None else None):
            if m is not None:
                attach_vae(m, cfg, vae)
    if ramp is not None and trainer.ema is not None and trainer.resumed_from is None:
        trainer.ema.decay = ramp.decay_for(1)
    if trainer.is_main:
        gc = "on (model.gradient_checkpointing=true)" if cfg.model.gradient_checkpointing else "off"
        for line in [f"gradient checkpointing: {gc}"] + ([latent_line] if latent_line else []):
            trainer.logger.info(line)
    if trainer.is_main and trainer.resumed_from is None:
        side = cfg.model_shape[1]  # the patch sizes of a latent run are on the latent grid
        mul = mean_batch_multiplier(side, cfg.patch)
        sizes = ", ".join(f"{s} ({q:.0%})" for s, q in patch_choices(side, cfg.patch.p))
        grid = "" if side == cfg.data.resolution else f" (latent side {side})"
        cond = f"class-conditional on {len(classes)} classes (label dropout {cfg.model.label_dropout})"
        trainer.logger.info(
            f"Patch Diffusion: {images.shape[0]} images at {cfg.data.resolution}px{grid}, {cfg.data.channels} "
            f"channels, {cond if classes else 'unconditional'}; patch sizes used {sizes} (p={cfg.patch.p}, "
            f"{cfg.patch.schedule}), mean batch x{mul:.2f}; UNet {count_params(model) / 1e6:.2f}M params on "
            f"{trainer.device}"
        )
    return trainer


def train(
    cfg: DiffusionConfig,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    classes: list[str] | None = None,
) -> Trainer:
    """Run (or resume) training to ``train.steps``; returns the finished Trainer."""
    trainer = make_trainer(cfg, images, labels, classes)
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
    model = build_model(cfg, state.get("task", {}).get("classes", []))
    attach_vae(model, cfg)
    weights = state["ema"]["module"] if (use_ema and "ema" in state) else state["model"]
    model.load_state_dict(weights)
    return model.eval(), cfg, step
