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


def rotmat_to_quat(rot: Tensor) -> Tensor:
    """wxyz unit quaternion of a rotation matrix (Shepperd's method, the largest pivot). [..., 3, 3] -> [..., 4]."""
    m = rot
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack(
        [
            torch.stack(
                [1 + t, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    1 + 2 * m[..., 0, 0] - t,
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 0, 1] + m[..., 1, 0],
                    1 + 2 * m[..., 1, 1] - t,
                    m[..., 1, 2] + m[..., 2, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 + 2 * m[..., 2, 2] - t,
                ],
                -1,
            ),
        ],
        dim=-2,
    )  # [..., 4, 4]: row i is 4 q_i q (one candidate per pivot)
    pivot = torch.stack([1 + t, 1 + 2 * m[..., 0, 0] - t, 1 + 2 * m[..., 1, 1] - t, 1 + 2 * m[..., 2, 2] - t], -1)
    best = pivot.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a b of wxyz quaternions (rotation b, then a). [..., 4] x [..., 4] -> [..., 4]."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def sh_rotation(rot: Tensor, degree: int, n_dirs: int = 64) -> Tensor:
    """The linear map T [K-1, K-1] of higher-order SH coefficients under a rotation ``rot`` [3, 3] of the world:
    the colour Y(d) c seen along d must be seen along d' = rot d after the rotation, Y(d') c' = Y(rot^T d') c for
    all d', so c' = T c with Y(d') T = Y(rot^T d'); solved exactly (each SH band is closed under rotation) by
    least squares over ``n_dirs`` fixed directions."""
    from splatting.render.sh import sh_basis

    k = num_sh_bases(degree)
    if k == 1:
        return torch.zeros(0, 0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(n_dirs, 3, generator=g, dtype=torch.float64), dim=-1)
    rot = rot.double()
    y_new = sh_basis(degree, dirs)[:, 1:]  # [D, K-1] at d' (the new frame)
    y_old = sh_basis(degree, dirs @ rot)[:, 1:]  # [D, K-1] at d = rot^T d' (rows: (rot^T d')^T = d'^T rot)
    return torch.linalg.lstsq(y_new, y_old).solution  # y_new T = y_old


@torch.no_grad()
def transform_gaussians(params: dict[str, Tensor], transform: Tensor) -> dict[str, Tensor]:
    """The Gaussians moved by a similarity x -> s R x + t (``transform`` [4, 4]): means mapped, log-scales
    + log s, rotations R q, view-dependent colour (higher-order SH) rotated with the world; opacity and the
    base colour unchanged. Returns new tensors in the input dtypes (computed in float64)."""
    t = transform.double().cpu()
    s = float(torch.linalg.norm(t[:3, 0]))
    rot = t[:3, :3] / s
    out = {k: v.detach().clone() for k, v in params.items()}
    means = params["means"].detach()
    out["means"] = (means.double().cpu() @ (s * rot).T + t[:3, 3]).to(means)
    out["scales"] = (params["scales"].detach().double() + math.log(s)).to(params["scales"])
    q = params["quats"].detach()
    out["quats"] = quat_multiply(rotmat_to_quat(rot)[None], q.double().cpu()).to(q)
    shn = params["shN"].detach()
    if shn.shape[1]:
        degree = math.isqrt(shn.shape[1] + 1) - 1
        tm = sh_rotation(rot, degree)  # [K-1, K-1]
        out["shN"] = torch.einsum("jk,nkc->njc", tm, shn.double().cpu()).to(shn)
    return out


__all__ += ["rotmat_to_quat", "quat_multiply", "sh_rotation", "transform_gaussians"]
