"""EDM preconditioning, noise-level distribution and loss weighting.

Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (NeurIPS 2022),
https://arxiv.org/abs/2206.00364, Table 1, as used unchanged by Patch Diffusion
(Wang et al. 2023, https://arxiv.org/abs/2304.12526). Each function is one row of Table 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class EDMConfig:
    """EDM hyperparameters (paper defaults)."""

    sigma_data: float = field(default=0.5, metadata={"help": "std of the data the network is scaled for"})
    p_mean: float = field(default=-1.2, metadata={"help": "mean of ln(sigma) during training"})
    p_std: float = field(default=1.2, metadata={"help": "std of ln(sigma) during training"})
    sigma_min: float = field(default=0.002, metadata={"help": "smallest noise level when sampling"})
    sigma_max: float = field(default=80.0, metadata={"help": "largest noise level when sampling"})
    rho: float = field(default=7.0, metadata={"help": "exponent of the sampling noise schedule"})

    def __post_init__(self) -> None:
        if self.sigma_data <= 0 or self.p_std <= 0:
            raise ValueError("edm.sigma_data and edm.p_std must be > 0")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"edm.sigma_min ({self.sigma_min}) must be > 0 and below edm.sigma_max ({self.sigma_max})")
        if self.rho <= 0:
            raise ValueError(f"edm.rho must be > 0, got {self.rho}")


def c_skip(sigma: Tensor, sigma_data: float) -> Tensor:
    """c_skip = sd^2 / (sigma^2 + sd^2)."""
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: Tensor, sigma_data: float) -> Tensor:
    """c_out = sigma sd / sqrt(sigma^2 + sd^2)."""
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def c_in(sigma: Tensor, sigma_data: float) -> Tensor:
    """c_in = 1 / sqrt(sigma^2 + sd^2)."""
    return (sigma**2 + sigma_data**2).rsqrt()


def c_noise(sigma: Tensor) -> Tensor:
    """c_noise = ln(sigma) / 4."""
    return sigma.log() / 4


def edm_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """Loss weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (= 1 / c_out^2)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(
    n: int, cfg: EDMConfig, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """Training noise levels: ln(sigma) ~ N(P_mean, P_std^2). Returns [n]."""
    z = torch.randn(n, generator=generator, device=device)
    return (cfg.p_mean + cfg.p_std * z).exp()


def precondition(
    raw: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigma: Tensor,
    sigma_data: float,
    pos: Tensor | None = None,
) -> Tensor:
    """D(x; sigma) = c_skip x + c_out F(cat(c_in x, pos), c_noise).

    x: [B, C, H, W] noisy image, sigma: [B], pos: [B, 2, H, W] coordinate channels or None.
    The coordinates are concatenated after the c_in scaling: they are never noised or scaled.
    """
    s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
    net_in = c_in(s, sigma_data) * x
    if pos is not None:
        net_in = torch.cat([net_in, pos.to(x.dtype)], dim=1)
    f = raw(net_in, c_noise(sigma.reshape(-1)))
    return c_skip(s, sigma_data) * x + c_out(s, sigma_data) * f.to(x.dtype)


def edm_loss(
    denoise: Callable[[Tensor, Tensor], Tensor], y: Tensor, sigma: Tensor, noise: Tensor, sigma_data: float
) -> Tensor:
    """Per-sample EDM loss lambda(sigma) ||D(y + sigma n; sigma) - y||^2, summed over C x H x W.

    Returns [B]. Summing over pixels (not averaging) follows EDM and Patch Diffusion: a small patch
    carries proportionally less loss than a full image.
    """
    s = sigma.reshape(-1, 1, 1, 1)
    d = denoise(y + s * noise, sigma)
    return edm_weight(sigma, sigma_data) * (d - y).square().flatten(1).sum(1)
