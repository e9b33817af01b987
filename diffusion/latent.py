"""Latent Patch Diffusion: patches of a frozen autoencoder's latents instead of pixels.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022),
https://arxiv.org/abs/2112.10752, with Patch Diffusion's patches and coordinates on the latent grid (as the
Patch Diffusion paper does for its latent experiments). ``model.vae=PATH`` is a diffusers ``AutoencoderKL``
folder on disk (``AutoencoderKL.save_pretrained``; never downloaded). The dataset is encoded once, as the
posterior mean times ``scaling_factor`` (deterministic, so resume and caching are exact); samples are
decoded back to pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor


class VAEError(ValueError):
    """model.vae does not point at a usable AutoencoderKL folder; the message says what to pass."""


def vae_config(path: str | Path) -> dict:
    """The AutoencoderKL's config.json (read without loading weights, so configs validate quickly)."""
    folder = Path(path).expanduser()
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise VAEError(
            f"model.vae={path}: no config.json there; pass a folder written by AutoencoderKL.save_pretrained "
            "(weights are read from disk only, never downloaded)"
        )
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("_class_name") not in (None, "AutoencoderKL"):
        raise VAEError(f"model.vae={path}: holds a {cfg['_class_name']}, not an AutoencoderKL")
    return cfg


def vae_factor(cfg: dict) -> int:
    """How much the autoencoder shrinks each side: 2 ** (levels - 1)."""
    return 2 ** (len(cfg.get("block_out_channels", (64,))) - 1)


def latent_shape(path: str | Path, channels: int | None, resolution: int) -> tuple[int, int]:
    """(latent channels, latent side) the denoiser sees for images of ``channels`` x ``resolution``^2
    (``channels`` None: not known yet, not checked)."""
    cfg = vae_config(path)
    if channels is not None and cfg.get("in_channels", 3) != channels:
        raise VAEError(
            f"model.vae={path} encodes {cfg.get('in_channels', 3)}-channel images but the data has {channels}; "
            f"set data.channels={cfg.get('in_channels', 3)}"
        )
    f = vae_factor(cfg)
    if resolution % f:
        raise VAEError(
            f"data.resolution={resolution} is not divisible by the autoencoder's factor {f}; "
            f"use --data.resolution={max(f, round(resolution / f) * f)}"
        )
    return int(cfg.get("latent_channels", 4)), resolution // f


def load_vae(path: str | Path, device: torch.device | str = "cpu"):
    """The frozen AutoencoderKL in eval mode (local folder only)."""
    from diffusers import AutoencoderKL

    from diffusion.pipeline import own_storage

    vae_config(path)
    vae = own_storage(AutoencoderKL.from_pretrained(str(Path(path).expanduser()), local_files_only=True))
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(vae, images: Tensor, batch_size: int = 32) -> Tensor:
    """[N, C, R, R] in [-1, 1] -> latents [N, c, R/f, R/f] = posterior mean * scaling_factor."""
    s = vae.config.scaling_factor
    dev = vae.device
    out = [vae.encode(x.to(dev)).latent_dist.mean.cpu() * s for x in images.split(batch_size)]
    return torch.cat(out)


class LatentDecoder:
    """Latents -> pixels in [-1, 1] with the frozen VAE (a plain object: not a submodule of the denoiser, so
    the VAE is neither trained, averaged, nor saved with the checkpoints)."""

    def __init__(self, vae, path: str = ""):
        self.vae, self.path = vae, path

    @torch.no_grad()
    def __call__(self, z: Tensor, batch_size: int = 32) -> Tensor:
        s = self.vae.config.scaling_factor
        dev = self.vae.device
        return torch.cat([self.vae.decode(c.to(dev) / s).sample.cpu() for c in z.split(batch_size)])
