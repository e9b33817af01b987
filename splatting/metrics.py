"""Image quality metrics: PSNR, SSIM (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5) and LPIPS.

LPIPS (https://arxiv.org/abs/1801.03924) needs its AlexNet/VGG backbone weights; they are looked up
locally (torch hub cache or an explicit path) and never downloaded: when absent, LPIPS is skipped and
:func:`lpips_metric` says why.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "lpips_metric", "LPIPSUnavailable"]


def psnr(img: Tensor, ref: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1]. [..., H, W, C] -> scalar."""
    mse = F.mse_loss(img.clamp(0, 1), ref)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def _gauss_window(size: int, sigma: float, channels: int, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(img: Tensor, ref: Tensor, window: int = 11, sigma: float = 1.5, padding: str = "valid") -> Tensor:
    """Mean structural similarity. img/ref [H, W, C] or [B, H, W, C] in [0, 1] -> scalar (differentiable).

    SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),
    C1 = 0.01^2, C2 = 0.03^2 (Wang et al. 2004, Eq. 13); ``padding`` "valid" drops the borders as
    torchmetrics does, "same" zero-pads as the INRIA training loss does.
    """
    if img.ndim == 3:
        img, ref = img[None], ref[None]
    x, y = img.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2)  # [B, C, H, W]
    ch = x.shape[1]
    w = _gauss_window(window, sigma, ch, x.device, x.dtype)
    pad = window // 2 if padding == "same" else 0

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, w, padding=pad, groups=ch)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


class LPIPSUnavailable(RuntimeError):
    """LPIPS cannot run here (no local backbone weights)."""


_LPIPS_CACHE: dict = {}

_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def _load_lpips(net: str, weights: str | os.PathLike | None):
    key = (net, str(weights))
    if key in _LPIPS_CACHE:
        return _LPIPS_CACHE[key]
    if net not in _BACKBONE_FILES:
        raise LPIPSUnavailable(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    path = Path(weights) if weights else hub / _BACKBONE_FILES[net]
    if not path.exists():
        raise LPIPSUnavailable(
            f"LPIPS skipped: backbone weights {path} not found (no downloads here); put "
            f"torchvision's {_BACKBONE_FILES[net]} there or pass eval.lpips_weights"
        )
    try:
        import lpips
    except ImportError as e:
        raise LPIPSUnavailable("LPIPS skipped: the 'lpips' package is not installed (pip install lpips)") from e
    if weights and path.parent != hub:
        os.environ.setdefault("TORCH_HOME", str(path.parent.parent))
    model = lpips.LPIPS(net=net, verbose=False).eval()
    _LPIPS_CACHE[key] = model
    return model


@torch.no_grad()
def lpips_metric(img: Tensor, ref: Tensor, net: str = "alex", weights: str | os.PathLike | None = None) -> Tensor:
    """LPIPS distance of [H, W, 3] images in [0, 1]; raises :class:`LPIPSUnavailable` with the reason."""
    model = _load_lpips(net, weights).to(img.device)
    x = img.clamp(0, 1).permute(2, 0, 1)[None] * 2 - 1
    y = ref.permute(2, 0, 1)[None] * 2 - 1
    return model(x, y).reshape(())
