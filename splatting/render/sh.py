"""Real spherical harmonics up to degree 3 for view-dependent colour.

3D Gaussian Splatting for Real-Time Radiance Field Rendering, https://arxiv.org/abs/2308.04079 (Sec. 4):
colour = max(0, sum_lm c_lm Y_lm(d) + 0.5), d the unit direction from the camera centre to the Gaussian.
Basis order and signs are those of the INRIA code and gsplat, so PLY files move between them unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis Y_lm(dirs) for l <= degree. dirs [..., 3] unit vectors -> [..., (degree+1)^2]."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    out = [torch.full_like(dirs[..., 0], C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-C1 * y, C1 * z, -C1 * x]
        if degree >= 2:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out += [C2[0] * xy, C2[1] * yz, C2[2] * (2.0 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
            if degree >= 3:
                out += [
                    C3[0] * y * (3.0 * xx - yy),
                    C3[1] * xy * z,
                    C3[2] * y * (4.0 * zz - xx - yy),
                    C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                    C3[4] * x * (4.0 * zz - xx - yy),
                    C3[5] * z * (xx - yy),
                    C3[6] * x * (xx - 3.0 * yy),
                ]
    return torch.stack(out, dim=-1)


def sh_to_color(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH colour. dirs [..., 3] (any length), coeffs [..., K, 3] with K >= (degree+1)^2 -> [..., 3].

    Returns the raw SH value; the renderer adds 0.5 and clamps at 0 as in the reference implementation.
    """
    n = num_sh_bases(degree)
    if coeffs.shape[-2] < n:
        raise ValueError(f"SH degree {degree} needs {n} coefficients per channel, got {coeffs.shape[-2]}")
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    basis = sh_basis(degree, dirs)  # [..., n]
    return (basis.unsqueeze(-1) * coeffs[..., :n, :]).sum(dim=-2)
