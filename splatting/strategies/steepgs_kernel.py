"""One fused Triton kernel for SteepGS's exact estimator: per Gaussian and view, the screen-space splitting matrix
from the conic and opacity gradients (``splitting_matrix_2d``), lifted with the projection Jacobian
(``projection_jacobian``, ``lift_splitting_matrix``) and added to the Gaussian's accumulated 3x3 matrix over the
views that see it. Its torch twin is :meth:`SteepGSStrategy._accumulate_torch` (those functions, then
``index_add_``); ``tests/splatting/test_steepgs_kernel.py`` compares them through Triton's interpreter.
"""

from __future__ import annotations

import torch

from genai_train.kernels import jit, triton_available

if triton_available():
    import triton
    import triton.language as tl
else:
    triton = tl = None

__all__ = ["accumulate_splitting_matrices_triton"]

BLOCK = 128


def _splitting_kernel(
    conic_ptr, gconic_ptr, opac_ptr, gopac_ptr, radii_ptr, means_ptr, view_ptr, k_ptr, s_ptr, C, N,
    BLOCK: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = n < N
    px = tl.load(means_ptr + n * 3 + 0, mask=ok, other=0.0)
    py = tl.load(means_ptr + n * 3 + 1, mask=ok, other=0.0)
    pz = tl.load(means_ptr + n * 3 + 2, mask=ok, other=1.0)
    s00 = tl.zeros([BLOCK], dtype=tl.float32)
    s01 = tl.zeros([BLOCK], dtype=tl.float32)
    s02 = tl.zeros([BLOCK], dtype=tl.float32)
    s11 = tl.zeros([BLOCK], dtype=tl.float32)
    s12 = tl.zeros([BLOCK], dtype=tl.float32)
    s22 = tl.zeros([BLOCK], dtype=tl.float32)
    for c in range(0, C):
        cn = c * N + n
        vis = ok & (tl.load(radii_ptr + cn * 2, mask=ok, other=0) > 0)
        vis = vis & (tl.load(radii_ptr + cn * 2 + 1, mask=ok, other=0) > 0)
        a = tl.load(conic_ptr + cn * 3 + 0, mask=vis, other=0.0)
        b = tl.load(conic_ptr + cn * 3 + 1, mask=vis, other=0.0)
        d = tl.load(conic_ptr + cn * 3 + 2, mask=vis, other=0.0)
        # M = -2 dL/dC, with dL/dC_01 = dL/db / 2
        m00 = -2.0 * tl.load(gconic_ptr + cn * 3 + 0, mask=vis, other=0.0)
        m01 = -tl.load(gconic_ptr + cn * 3 + 1, mask=vis, other=0.0)
        m11 = -2.0 * tl.load(gconic_ptr + cn * 3 + 2, mask=vis, other=0.0)
        alpha = tl.load(opac_ptr + cn, mask=vis, other=0.0) * tl.load(gopac_ptr + cn, mask=vis, other=0.0)
        # S2D = C M C - alpha C
        cm00, cm01 = a * m00 + b * m01, a * m01 + b * m11
        cm10, cm11 = b * m00 + d * m01, b * m01 + d * m11
        t00 = cm00 * a + cm01 * b - alpha * a
        t01 = cm00 * b + cm01 * d - alpha * b
        t11 = cm10 * b + cm11 * d - alpha * d
        # camera-space mean t = R p + T and the Jacobian J = du/dt R (rows j0, j1)
        v = view_ptr + c * 16
        r00, r01, r02 = tl.load(v + 0), tl.load(v + 1), tl.load(v + 2)
        r10, r11, r12 = tl.load(v + 4), tl.load(v + 5), tl.load(v + 6)
        r20, r21, r22 = tl.load(v + 8), tl.load(v + 9), tl.load(v + 10)
        tx = r00 * px + r01 * py + r02 * pz + tl.load(v + 3)
        ty = r10 * px + r11 * py + r12 * pz + tl.load(v + 7)
        tz = r20 * px + r21 * py + r22 * pz + tl.load(v + 11)
        tz = tl.where(vis, tz, 1.0)
        fx, fy = tl.load(k_ptr + c * 9 + 0), tl.load(k_ptr + c * 9 + 4)
        u0, u2 = fx / tz, -fx * tx / (tz * tz)
        w1, w2 = fy / tz, -fy * ty / (tz * tz)
        j00, j01, j02 = u0 * r00 + u2 * r20, u0 * r01 + u2 * r21, u0 * r02 + u2 * r22
        j10, j11, j12 = w1 * r10 + w2 * r20, w1 * r11 + w2 * r21, w1 * r12 + w2 * r22
        # J^T S2D J, symmetric: (S2D J) columns first
        q00, q01, q02 = t00 * j00 + t01 * j10, t00 * j01 + t01 * j11, t00 * j02 + t01 * j12
        q10, q11, q12 = t01 * j00 + t11 * j10, t01 * j01 + t11 * j11, t01 * j02 + t11 * j12
        s00 += tl.where(vis, j00 * q00 + j10 * q10, 0.0)
        s01 += tl.where(vis, j00 * q01 + j10 * q11, 0.0)
        s02 += tl.where(vis, j00 * q02 + j10 * q12, 0.0)
        s11 += tl.where(vis, j01 * q01 + j11 * q11, 0.0)
        s12 += tl.where(vis, j01 * q02 + j11 * q12, 0.0)
        s22 += tl.where(vis, j02 * q02 + j12 * q12, 0.0)
    o = s_ptr + n * 9  # row-major 3x3, symmetric
    tl.store(o + 0, tl.load(o + 0, mask=ok, other=0.0) + s00, mask=ok)
    tl.store(o + 1, tl.load(o + 1, mask=ok, other=0.0) + s01, mask=ok)
    tl.store(o + 2, tl.load(o + 2, mask=ok, other=0.0) + s02, mask=ok)
    tl.store(o + 3, tl.load(o + 3, mask=ok, other=0.0) + s01, mask=ok)
    tl.store(o + 4, tl.load(o + 4, mask=ok, other=0.0) + s11, mask=ok)
    tl.store(o + 5, tl.load(o + 5, mask=ok, other=0.0) + s12, mask=ok)
    tl.store(o + 6, tl.load(o + 6, mask=ok, other=0.0) + s02, mask=ok)
    tl.store(o + 7, tl.load(o + 7, mask=ok, other=0.0) + s12, mask=ok)
    tl.store(o + 8, tl.load(o + 8, mask=ok, other=0.0) + s22, mask=ok)


def accumulate_splitting_matrices_triton(
    S: torch.Tensor,
    conics: torch.Tensor,
    grad_conics: torch.Tensor,
    opacities: torch.Tensor,
    grad_opacities: torch.Tensor,
    radii: torch.Tensor,
    means: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
) -> None:
    """S [N, 3, 3] += sum over views c that see Gaussian n (radii > 0) of J^T S2D J (float32, in place).

    conics, grad_conics [C, N, 3]; opacities, grad_opacities [C, N]; radii [C, N, 2]; means [N, 3];
    viewmats [C, 4, 4]; Ks [C, 3, 3]."""
    C, N = opacities.shape
    args = [x.detach().float().contiguous() for x in (conics, grad_conics, opacities, grad_opacities)]
    rad = radii.to(torch.int32).contiguous()
    geo = [x.detach().float().contiguous() for x in (means, viewmats, Ks)]
    jit(_splitting_kernel)[(triton.cdiv(N, BLOCK),)](*args, rad, *geo, S, C, N, BLOCK=BLOCK)
