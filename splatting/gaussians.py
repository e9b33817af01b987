"""Gaussian parameters and their initialization from SfM points.

3D Gaussian Splatting for Real-Time Radiance Field Rendering, https://arxiv.org/abs/2308.04079 (Sec. 5):
means at the SfM points, isotropic scales from the mean distance to the 3 nearest neighbours, colours as
SH degree-0 coefficients. Parameters use gsplat's layout and activations: means [N, 3], scales [N, 3]
(log), quats [N, 4] (wxyz, unnormalized), opacities [N] (logit), sh0 [N, 1, 3], shN [N, K-1, 3].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from splatting.render.sh import C0, num_sh_bases

__all__ = [
    "PARAM_KEYS",
    "quat_to_rotmat",
    "covariance_3d",
    "rgb_to_sh",
    "sh_to_rgb",
    "knn_mean_distance",
    "init_gaussians",
    "empty_gaussians",
]

PARAM_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Unit rotation from a (not necessarily normalized) wxyz quaternion. [..., 4] -> [..., 3, 3]."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """Sigma = R S S^T R^T (paper Eq. 6). quats [N, 4], scales [N, 3] (linear) -> [N, 3, 3]."""
    m = quat_to_rotmat(quats) * scales[..., None, :]  # R S
    return m @ m.transpose(-1, -2)


def inverse_covariance_3d(quats: Tensor, log_scales: Tensor, max_log: float = 40.0) -> Tensor:
    """Sigma^-1 = R S^-2 R^T in closed form from the rotation and the log-scales: no matrix inversion, so it is
    finite for a scale at 0 (log-scale -> -inf) or huge, where the float32 covariance is singular.
    quats [N, 4], log_scales [N, 3] -> [N, 3, 3]; log-scales are clamped to +-max_log (e^80 fits float32)."""
    inv_s = torch.exp(-log_scales.nan_to_num(0.0).clamp(-max_log, max_log))  # [N, 3]
    m = quat_to_rotmat(quats) * inv_s[..., None, :]  # R S^-1
    return m @ m.transpose(-1, -2)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Degree-0 SH coefficient whose rendered colour (C0 * c + 0.5) is ``rgb``."""
    return (rgb - 0.5) / C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    return sh * C0 + 0.5


def knn_mean_distance(points: Tensor, k: int = 3) -> Tensor:
    """Mean Euclidean distance of each point to its k nearest other points. [P, 3] -> [P]."""
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    if len(pts) < 2:
        return torch.ones(len(pts), dtype=points.dtype)
    kk = min(k + 1, len(pts))
    dist, _ = cKDTree(pts).query(pts, k=kk)
    return torch.from_numpy(np.asarray(dist)[:, 1:].mean(-1)).to(points.dtype)


def init_gaussians(
    points: Tensor,
    colors: Tensor,
    sh_degree: int = 3,
    init_opacity: float = 0.1,
    init_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.nn.ParameterDict:
    """Gaussians at ``points`` [P, 3] with ``colors`` [P, 3] in [0, 1] (gsplat's SfM initialization)."""
    if points.ndim != 2 or points.shape[-1] != 3 or len(points) == 0:
        raise ValueError(
            f"need a non-empty [P, 3] point cloud to initialize Gaussians, got {tuple(points.shape)}; "
            f"the COLMAP model has no 3-D points (run triangulation)"
        )
    n = points.shape[0]
    dist = knn_mean_distance(points).clamp_min(1e-7)  # [N]
    scales = torch.log(dist * init_scale)[:, None].repeat(1, 3)
    quats = torch.rand(n, 4, generator=generator)
    opac = torch.full((n,), math.log(init_opacity / (1 - init_opacity)))
    sh0 = rgb_to_sh(colors.float())[:, None, :]
    shn = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
    return torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(points.float().clone()),
            "scales": torch.nn.Parameter(scales.float()),
            "quats": torch.nn.Parameter(quats),
            "opacities": torch.nn.Parameter(opac),
            "sh0": torch.nn.Parameter(sh0),
            "shN": torch.nn.Parameter(shn),
        }
    )


def empty_gaussians(n: int, sh_degree: int = 3) -> torch.nn.ParameterDict:
    """Zero-filled parameters of the right shapes (to load a checkpoint or PLY into)."""
    k = num_sh_bases(sh_degree) - 1
    shapes = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3), "shN": (n, k, 3)}
    return torch.nn.ParameterDict({key: torch.nn.Parameter(torch.zeros(s)) for key, s in shapes.items()})


class GaussianModel:
    """The Gaussians as one stateful object: ``params`` (a ParameterDict the strategies rewrite in place).

    Densification changes the number of Gaussians, so loading a checkpoint resizes each Parameter to the saved
    tensor (``Parameter.data`` is replaced; the Parameter object stays, so optimizers built on it stay bound).
    """

    def __init__(self, params: torch.nn.ParameterDict):
        self.params = params

    def __len__(self) -> int:
        return len(self.params["means"])

    def state_dict(self) -> dict[str, Tensor]:
        return {k: p.detach().clone() for k, p in self.params.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.params.keys()) - set(state)
        if missing:
            raise KeyError(f"saved Gaussians lack {sorted(missing)}")
        for k, p in self.params.items():
            p.data = state[k].to(device=p.device, dtype=p.dtype).clone()


__all__ += ["GaussianModel"]
