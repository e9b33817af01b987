"""SteepGS math: the exact splitting matrix from conic/opacity gradients equals the brute-force definition."""

from __future__ import annotations

import math

import pytest
import torch

from splatting.strategies.steepgs import (
    conic_matrix,
    lift_splitting_matrix,
    projection_jacobian,
    smallest_eigen,
    splitting_matrix_2d,
)

H = W = 16


def _pixels() -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return torch.stack([xs + 0.5, ys + 0.5], -1)  # [H, W, 2] pixel centres


def _alphas(means, conics, opac):
    d = _pixels()[None] - means[:, None, None, :]  # [N, H, W, 2]
    a, b, c = conics[:, 0, None, None], conics[:, 1, None, None], conics[:, 2, None, None]
    q = a * d[..., 0] ** 2 + 2 * b * d[..., 0] * d[..., 1] + c * d[..., 1] ** 2
    return opac[:, None, None] * torch.exp(-0.5 * q)  # [N, H, W]


def _composite(alphas, colors, bg):
    """Front-to-back: C = sum_i T_i alpha_i c_i + T_N bg, T_i = prod_{j<i} (1 - alpha_j)."""
    T = torch.cumprod(torch.cat([torch.ones_like(alphas[:1]), 1 - alphas], 0), 0)  # [N+1, H, W]
    img = (T[:-1, ..., None] * alphas[..., None] * colors[:, None, None, :]).sum(0)
    return img + T[-1, ..., None] * bg


def _loss(img, target):
    return ((img - target) ** 2).sum()


def _scene(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=g, dtype=torch.float64) * 10 + 3
    L = torch.rand(n, 2, 2, generator=g, dtype=torch.float64) * 0.3
    cov = L @ L.transpose(1, 2) * 30 + torch.eye(2, dtype=torch.float64) * 2.0
    conic = torch.linalg.inv(cov)
    conics = torch.stack([conic[:, 0, 0], conic[:, 0, 1], conic[:, 1, 1]], -1)
    opac = torch.rand(n, generator=g, dtype=torch.float64) * 0.6 + 0.3
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    target = torch.rand(H, W, 3, generator=g, dtype=torch.float64)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    return means, conics, opac, colors, target, bg


@pytest.mark.parametrize("n", [1, 2, 3])
def test_exact_splitting_matrix_equals_brute_force_hessian_sum(n):
    means, conics, opac, colors, target, bg = _scene(n, seed=n)
    conics = conics.clone().requires_grad_(True)
    opac = opac.clone().requires_grad_(True)
    _loss(_composite(_alphas(means, conics, opac), colors, bg), target).backward()
    exact = splitting_matrix_2d(conics.detach(), conics.grad, opac.detach(), opac.grad)  # [N, 2, 2]

    # brute force: sum over pixels of dL/dsigma_i(x) * Hessian_m sigma_i(x), the Hessian by autograd
    alphas = _alphas(means, conics.detach(), opac.detach()).requires_grad_(True)
    _loss(_composite(alphas, colors, bg), target).backward()
    dL_dsigma = alphas.grad  # [N, H, W]
    px = _pixels().reshape(-1, 2)
    for i in range(n):
        C, o_i = conic_matrix(conics.detach()[i]), opac.detach()[i]

        def sigma(m, x, C=C, o=o_i):
            d = x - m
            return o * torch.exp(-0.5 * d @ C @ d)

        hess = torch.vmap(torch.func.hessian(sigma), in_dims=(None, 0))(means[i], px)  # [HW, 2, 2]
        brute = (dL_dsigma[i].reshape(-1, 1, 1) * hess).sum(0)
        torch.testing.assert_close(exact[i], brute, rtol=1e-5, atol=1e-8)


def test_projection_jacobian_matches_autograd():
    g = torch.Generator().manual_seed(0)
    angle = 0.3
    R = torch.tensor(
        [[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]], dtype=torch.float64
    )
    T = torch.tensor([0.1, -0.2, 4.0], dtype=torch.float64)
    fx, fy = 50.0, 60.0
    p = torch.randn(5, 3, generator=g, dtype=torch.float64)

    def project(x):
        t = R @ x + T
        return torch.stack([fx * t[0] / t[2] + 8, fy * t[1] / t[2] + 8])

    auto = torch.vmap(torch.func.jacrev(project))(p)  # [5, 2, 3]
    analytic = projection_jacobian(p @ R.T + T, fx, fy, R)
    torch.testing.assert_close(analytic, auto)
    S2 = torch.randn(5, 2, 2, generator=g, dtype=torch.float64)
    S2 = S2 + S2.transpose(1, 2)
    lifted = lift_splitting_matrix(S2, analytic)
    # the lift is the second-order term of u(p): v^T (J^T S J) v == (J v)^T S (J v)
    v = torch.randn(5, 3, generator=g, dtype=torch.float64)
    Jv = (analytic @ v[..., None])[..., 0]
    torch.testing.assert_close(torch.einsum("ni,nij,nj->n", v, lifted, v), torch.einsum("ni,nij,nj->n", Jv, S2, Jv))


def _two_blob_scene():
    """Target: two separated blobs on one row; model: one wide Gaussian centred between them."""
    px = _pixels()
    blob = lambda cx: torch.exp(-((px[..., 0] - cx) ** 2 + (px[..., 1] - 8) ** 2) / (2 * 1.5**2))  # noqa: E731
    target = (blob(4.0) + blob(12.0)).clamp(max=1)[..., None].expand(H, W, 3)
    cov = torch.tensor([[12.0, 0.0], [0.0, 2.25]], dtype=torch.float64)
    conic = torch.linalg.inv(cov)
    conics = torch.stack([conic[0, 0], conic[0, 1], conic[1, 1]])[None]
    means = torch.tensor([[8.0, 8.0]], dtype=torch.float64)
    opac = torch.tensor([0.8], dtype=torch.float64)
    colors = torch.ones(1, 3, dtype=torch.float64)
    bg = torch.zeros(3, dtype=torch.float64)
    return means, conics, opac, colors, target, bg


def _split_loss(means, conics, opac, colors, target, bg, direction, eps):
    m = torch.cat([means + eps * direction, means - eps * direction])
    return _loss(
        _composite(_alphas(m, conics.repeat(2, 1), opac.repeat(2) / 2), colors.repeat(2, 1), bg), target
    ).item()


def test_gaussian_at_saddle_is_detected_and_split_along_v_min_beats_random():
    means, conics, opac, colors, target, bg = _two_blob_scene()
    m = means.clone().requires_grad_(True)
    c = conics.clone().requires_grad_(True)
    o = opac.clone().requires_grad_(True)
    _loss(_composite(_alphas(m, c, o), colors, bg), target).backward()
    assert m.grad.norm() < 1e-9, "by symmetry the mean is stationary: plain gradient descent cannot move it"
    S = splitting_matrix_2d(c.detach(), c.grad, o.detach(), o.grad)
    vals, vecs = torch.linalg.eigh(S[0])
    assert vals[0] < 0, f"lambda_min = {vals[0]:.3g} should be negative at a saddle"
    v_min = vecs[:, 0]
    assert abs(v_min[0]) > 0.99, "the steepest split direction is along the line joining the two blobs"
    g = torch.Generator().manual_seed(0)
    eps = 2.0
    l_min = _split_loss(means, conics, opac, colors, target, bg, v_min, eps)
    for _ in range(5):
        r = torch.randn(2, generator=g, dtype=torch.float64)
        r = r / r.norm()
        if abs(r @ v_min) > 0.95:
            continue
        assert l_min < _split_loss(means, conics, opac, colors, target, bg, r, eps)


def test_smallest_eigen_returns_unit_eigenvector():
    A = torch.tensor([[[2.0, 0, 0], [0, -1.0, 0], [0, 0, 3.0]]])
    val, vec = smallest_eigen(A)
    assert val.item() == pytest.approx(-1.0) and torch.allclose(vec.abs(), torch.tensor([[0.0, 1.0, 0.0]]))
