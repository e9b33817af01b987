"""The denoiser: a stock diffusers UNet2DModel with C + 2 input channels, wrapped in EDM preconditioning.

The two extra input channels are Patch Diffusion's (x, y) coordinates; the output has C channels. Because
the UNet is a plain UNet2DModel, the exported weights load with stock diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from diffusion.edm import precondition


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

    @property
    def downsample_factor(self) -> int:
        """How much the UNet shrinks its input: every input side must be a multiple of this."""
        return 2 ** (len(self.block_out_channels) - 1)


def build_unet(cfg: ModelConfig, img_channels: int, resolution: int):
    """UNet2DModel(in = img_channels + 2 coordinate channels, out = img_channels)."""
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
    )


def check_patch_sizes(sizes: list[int], resolution: int, downsample: int, n_levels: int) -> None:
    """Every patch side must pass through the UNet's down/up-sampling without rounding."""
    bad = [s for s in sizes if s % downsample]
    if bad:
        raise ValueError(
            f"resolution {resolution}: patch size(s) {bad} are not divisible by {downsample}, the UNet's "
            f"downsampling ({n_levels} levels = {n_levels - 1} halvings). Use a resolution divisible by "
            f"{downsample * resolution // min(sizes)} (or fewer model.block_out_channels levels, "
            "or patch.p=1.0)"
        )


class PatchEDM(nn.Module):
    """D(x; sigma, pos) = c_skip x + c_out F(cat(c_in x, pos), c_noise) with F a UNet2DModel."""

    def __init__(self, unet: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.unet = unet
        self.sigma_data = sigma_data

    @property
    def img_channels(self) -> int:
        return self.unet.config.out_channels

    def raw(self, net_in: Tensor, noise_cond: Tensor) -> Tensor:
        return self.unet(net_in, noise_cond).sample

    def forward(self, x: Tensor, sigma: Tensor, pos: Tensor) -> Tensor:
        # x [B,C,H,W], sigma [B], pos [B,2,H,W]
        return precondition(self.raw, x, sigma, self.sigma_data, pos)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
