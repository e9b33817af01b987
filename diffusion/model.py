"""The denoiser: a stock diffusers UNet2DModel with C + 2 input channels, wrapped in EDM preconditioning.

The two extra input channels are Patch Diffusion's (x, y) coordinates; the output has C channels. Because
the UNet is a plain UNet2DModel, the exported weights load with stock diffusers. A class-conditional model
(K classes) uses the UNet's own class embedding (``num_class_embeds = K + 1``): index K is the "null" class
of the unconditional prediction that classifier-free guidance needs (Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffusion.edm import precondition
from genai_train.run import path_field


@dataclass
class ModelConfig:
    """diffusers UNet2DModel layout (one entry per resolution level)."""

    block_out_channels: tuple[int, ...] = field(
        default=(64, 128, 128),
        metadata={"help": "channels per level; each level after the first halves the size"},
    )
    attention: tuple[bool, ...] = field(
        default=(False, False, True), metadata={"help": "self-attention in each level's blocks"}
    )
    layers_per_block: int = field(default=2, metadata={"help": "residual blocks per level"})
    norm_num_groups: int = field(default=16, metadata={"help": "GroupNorm groups (divides every channel count)"})
    attention_head_dim: int = field(default=32, metadata={"help": "channels per attention head"})
    dropout: float = field(default=0.0, metadata={"help": "dropout in the residual blocks"})
    label_dropout: float = field(
        default=0.1,
        metadata={
            "help": "class-conditional only: share of labels replaced by the null class (classifier-free guidance)"
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in backward (less memory, ~30% slower)"}
    )
    vae: str = path_field(
        "", "latent Patch Diffusion: a diffusers AutoencoderKL folder on disk; train on its latents ('' = pixels)"
    )

    def __post_init__(self) -> None:
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError(
                f"model.attention has {len(self.attention)} entries but model.block_out_channels has "
                f"{len(self.block_out_channels)}; give one flag per level"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"model.norm_num_groups={self.norm_num_groups} must divide every channel count; {bad} are not multiples"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"model.label_dropout must be in [0, 1), got {self.label_dropout}")

    @property
    def downsample_factor(self) -> int:
        """How much the UNet shrinks its input: every input side must be a multiple of this."""
        return 2 ** (len(self.block_out_channels) - 1)


def build_unet(cfg: ModelConfig, img_channels: int, resolution: int, num_classes: int = 0):
    """UNet2DModel(in = img_channels + 2 coordinate channels, out = img_channels); with ``num_classes`` K > 0
    a class embedding of K + 1 entries (the last is the null class)."""
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=resolution,
        in_channels=img_channels + 2,
        out_channels=img_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim,
        dropout=cfg.dropout,
        time_embedding_type="positional",  # not "fourier": it takes log() of c_noise and divides by it
        class_embed_type=None,
        num_class_embeds=num_classes + 1 if num_classes else None,
    )


def patch_setting_problem(resolution: int, p: float, downsample: int) -> str | None:
    """Why (resolution, patch.p) does not fit a UNet that shrinks by ``downsample``, or None when it does.

    Every patch side (R, and R/2, R/4 when p < 1) must be a whole number of pixels divisible by ``downsample``.
    """
    if p < 1.0 and resolution % 4:
        return f"patches of R/2 and R/4 = {resolution / 2:g} and {resolution / 4:g} pixels are not whole pixels"
    sizes = [resolution] if p >= 1.0 else [resolution // 4, resolution // 2] + ([resolution] if p > 0 else [])
    bad = [s for s in sizes if s % downsample]
    if bad:
        return f"patch size(s) {bad} are not divisible by {downsample}, the UNet's downsampling"
    return None


def suggest_resolution(resolution: int, p: float, downsample: int) -> int:
    """The nearest resolution (ties: the larger) that fits (p, downsample); the result is verified."""
    step = downsample * (4 if p < 1.0 else 1)
    lower, upper = max(step, resolution // step * step), (resolution // step + 1) * step
    best = upper if upper - resolution <= resolution - lower else lower
    assert patch_setting_problem(best, p, downsample) is None, (best, p, downsample)
    return best


def check_patch_setting(resolution: int, p: float, downsample: int, n_levels: int) -> None:
    """Raise with a setting that works when the UNet cannot take every patch side without rounding."""
    why = patch_setting_problem(resolution, p, downsample)
    if why is None:
        return
    fixes = [f"--data.resolution={suggest_resolution(resolution, p, downsample)}"]
    if p < 1.0 and patch_setting_problem(resolution, 1.0, downsample) is None:
        fixes.append("--patch.p=1.0 (full images only)")
    if n_levels > 1:
        fewer = [lv for lv in range(n_levels - 1, 0, -1) if patch_setting_problem(resolution, p, 2 ** (lv - 1)) is None]
        if fewer:
            fixes.append(f"a UNet with {fewer[0]} levels (model.block_out_channels with {fewer[0]} entries)")
    raise ValueError(
        f"data.resolution={resolution} with patch.p={p} does not fit the UNet ({n_levels} levels = {n_levels - 1} "
        f"halvings, so every patch side must be divisible by {downsample}): {why}. Use " + ", or ".join(fixes)
    )


def check_patch_sizes(sizes: list[int], resolution: int, downsample: int, n_levels: int) -> None:
    """Every patch side must pass through the UNet's down/up-sampling without rounding."""
    bad = [s for s in sizes if s % downsample]
    if bad:
        p = 1.0 if sizes == [resolution] else 0.5
        check_patch_setting(resolution, p, downsample, n_levels)


class PatchEDM(nn.Module):
    """D(x; sigma, pos, class) = c_skip x + c_out F(cat(c_in x, pos), c_noise, class) with F a UNet2DModel.

    ``classes`` names the K classes of a class-conditional UNet (empty: unconditional); class index K is the
    null class, which ``forward`` uses when no labels are given.
    """

    def __init__(self, unet: nn.Module, sigma_data: float = 0.5, classes: list[str] | None = None):
        super().__init__()
        self.unet = unet
        self.sigma_data = sigma_data
        self.classes = list(classes or [])
        embeds = getattr(unet.config, "num_class_embeds", None)
        if (embeds or 0) != (len(self.classes) + 1 if self.classes else 0):
            raise ValueError(f"the UNet has {embeds} class embeddings but {len(self.classes)} class names were given")

    @property
    def img_channels(self) -> int:
        return self.unet.config.out_channels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def null_class(self) -> int:
        """The class index of the unconditional prediction (K)."""
        return len(self.classes)

    def raw(self, net_in: Tensor, noise_cond: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.unet(net_in, noise_cond, class_labels=class_labels).sample

    def forward(self, x: Tensor, sigma: Tensor, pos: Tensor, class_labels: Tensor | None = None) -> Tensor:
        # x [B,C,H,W], sigma [B], pos [B,2,H,W], class_labels [B] int64 (None: unconditional)
        if self.num_classes and class_labels is None:
            class_labels = torch.full((x.shape[0],), self.null_class, dtype=torch.int64, device=x.device)
        elif not self.num_classes and class_labels is not None:
            raise ValueError("class labels given to an unconditional model (trained with data.labels=none)")
        return precondition(lambda h, c: self.raw(h, c, class_labels), x, sigma, self.sigma_data, pos)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
