"""The PyTorch tile rasterizer against a brute-force per-pixel renderer and gsplat's pure-torch projection."""

from __future__ import annotations

import pytest
import torch

from splatting.gaussians import covariance_3d
from splatting.render.project import RasterSettings, project_ewa, tile_touches
from splatting.render.sh import sh_to_color
from splatting.render.torch_raster import rasterize

from .splat_reference import reference_render


def _scene(n: int, seed: int, dtype=torch.float64, opac_lo: float = 0.01, spread: float = 0.6, scale_lo=0.02):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * spread
    means[:, 2] += 4.0
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.2 + scale_lo
    opac = torch.rand(n, generator=g, dtype=dtype) * (0.99 - opac_lo) + opac_lo
    cols = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, quats, scales, opac, cols


def _camera(width: int, height: int, dtype=torch.float64):
    K = torch.tensor([[1.0 * width, 0, width / 2], [0, 1.0 * width, height / 2], [0, 0, 1]], dtype=dtype)
    return torch.eye(4, dtype=dtype)[None], K[None]


def _fast_and_reference(n, seed, width, height, settings, dtype=torch.float64, background=True, **kw):
    means, quats, scales, opac, cols = _scene(n, seed, dtype, **kw)
    viewmats, Ks = _camera(width, height, dtype)
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=dtype) if background else None
    leaves = [t.requires_grad_() for t in (means, quats, scales, opac, cols)]
    img, alpha, info = rasterize(
        means,
        quats,
        scales,
        opac,
        cols,
        viewmats,
        Ks,
        width,
        height,
        backgrounds=None if bg is None else bg[None],
        settings=settings,
    )
    w = torch.randn(img.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    loss = (img * w).sum() + (alpha * w[..., :1]).sum()
    g_fast = torch.autograd.grad(loss, leaves)
    m2, con, dep, rad = project_ewa(means, covariance_3d(quats, scales), viewmats, Ks, width, height, settings)
    ref_img, ref_alpha = reference_render(m2[0], con[0], opac, cols, rad[0], dep[0], width, height, bg, settings)
    loss_ref = (ref_img * w[0]).sum() + (ref_alpha * w[0, ..., :1]).sum()
    g_ref = torch.autograd.grad(loss_ref, leaves)
    return (img[0], alpha[0], g_fast), (ref_img, ref_alpha, g_ref), info


@pytest.mark.parametrize(
    "seed,n,tile,chunk,opac_lo",
    [
        (0, 60, 16, 1 << 22, 0.01),  # one chunk
        (1, 80, 8, 3000, 0.01),  # many small chunks, 8-pixel tiles
        (2, 120, 16, 5000, 0.9),  # nearly opaque: early termination (T <= 1e-4) and alpha clamp matter
    ],
)
def test_images_and_gradients_match_bruteforce_reference(seed, n, tile, chunk, opac_lo):
    settings = RasterSettings(tile_size=tile, chunk_elems=chunk)
    (img, alpha, g), (ref, ref_alpha, g_ref), info = _fast_and_reference(n, seed, 37, 29, settings, opac_lo=opac_lo)
    assert info["n_isects"] > n  # Gaussians overlap several tiles
    assert (img - ref).abs().max() < 1e-4
    assert (alpha - ref_alpha).abs().max() < 1e-4
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), g, g_ref):
        assert b.abs().max() > 1e-3, f"{name}: reference gradient is trivially zero"
        assert (a - b).abs().max() < 1e-4 * max(1.0, b.abs().max().item()), name


@pytest.mark.parametrize("store", [0, 20_000, 1 << 26])  # backward recomputes all / some / none of the fragments
def test_saturated_tiles_leave_early_without_changing_images_or_gradients(monkeypatch, store):
    """Tiles whose every pixel is saturated drop out of their chunk between depth blocks (forward and the
    replaying backward); small blocks and tiles make that happen often, and the result stays exact, whether
    the backward reuses the forward's fragments (within ``store_elems``) or recomputes them."""
    from splatting.render import torch_raster

    original = torch_raster._Composite.forward
    drops = []

    def spy(ctx, *args):
        out = original(ctx, *args)
        drops.append(len(ctx.drops))
        return out

    monkeypatch.setattr(torch_raster._Composite, "forward", staticmethod(spy))
    settings = RasterSettings(tile_size=4, k_block=2, store_elems=store)
    (img, alpha, g), (ref, ref_alpha, g_ref), _ = _fast_and_reference(300, 4, 80, 64, settings, opac_lo=0.9, spread=0.4)
    assert sum(drops) >= 5 and max(drops) >= 2, drops  # several chunks drop tiles, some more than once
    # float64: exact up to rounding (replaying a drop one block early in the backward gives 2e-5 relative)
    assert (img - ref).abs().max() < 1e-9
    assert (alpha - ref_alpha).abs().max() < 1e-9
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), g, g_ref):
        assert b.abs().max() > 1e-3, f"{name}: reference gradient is trivially zero"
        assert (a - b).abs().max() < 1e-9 * max(1.0, b.abs().max().item()), name


def test_float32_matches_reference_and_early_stop_is_exercised():
    settings = RasterSettings(tile_size=16, chunk_elems=1 << 16)
    (img, alpha, g), (ref, ref_alpha, g_ref), _ = _fast_and_reference(
        150, 3, 33, 21, settings, torch.float32, background=False, opac_lo=0.95, spread=0.3
    )
    assert (ref_alpha > 1 - 2e-4).any()  # some pixels reached the transmittance floor
    assert (img - ref).abs().max() < 1e-4
    for a, b in zip(g, g_ref):
        assert (a - b).abs().max() < 1e-4 * max(1.0, b.abs().max().item())


def test_tile_size_chunking_and_depth_blocks_do_not_change_the_image():
    means, quats, scales, opac, cols = _scene(200, 5, torch.float64, opac_lo=0.5)
    viewmats, Ks = _camera(50, 40)
    setups = [(16, 1 << 22, 32), (8, 999, 4), (4, 1 << 14, 1), (16, 1 << 22, 1024)]
    outs = [
        rasterize(
            means,
            quats,
            scales,
            opac,
            cols,
            viewmats,
            Ks,
            50,
            40,
            settings=RasterSettings(tile_size=t, chunk_elems=c, k_block=kb),
        )[0]
        for t, c, kb in setups
    ]
    for other in outs[1:]:
        assert (outs[0] - other).abs().max() < 1e-12


def test_info_holds_graph_tensors_for_strategies():
    means, quats, scales, opac, cols = _scene(40, 7, torch.float32)
    viewmats, Ks = _camera(32, 24, torch.float32)
    viewmats = torch.cat([viewmats, viewmats])  # two views
    Ks = torch.cat([Ks, Ks])
    for t in (means, quats, scales, opac, cols):
        t.requires_grad_()
    img, alpha, info = rasterize(means, quats, scales, opac, cols, viewmats, Ks, 32, 24)
    assert img.shape == (2, 24, 32, 3) and alpha.shape == (2, 24, 32, 1)
    assert info["means2d"].shape == (2, 40, 2) and info["conics"].shape == (2, 40, 3)
    assert info["opacities"].shape == (2, 40) and info["radii"].shape == (2, 40, 2)
    for k in ("means2d", "conics", "opacities"):
        info[k].retain_grad()
    img.sum().backward()
    visible = (info["radii"] > 0).all(-1)
    for k in ("means2d", "conics", "opacities"):
        assert info[k].grad is not None and info[k].grad[visible].abs().sum() > 0, k
    # the per-view opacity gradients add up to the opacity gradient
    assert torch.allclose(info["opacities"].grad.sum(0), opac.grad, atol=1e-5)


def test_projection_matches_gsplat_torch_impl():
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    means, quats, scales, _, _ = _scene(300, 11, torch.float64, spread=1.5)
    means[:5, 2] = -1.0  # behind the camera
    viewmats, Ks = _camera(64, 48)
    covars = covariance_3d(quats, scales)
    radii, m2d, depths, conics, _ = impl._fully_fused_projection(means, covars, viewmats, Ks, 64, 48)
    our_m2d, our_conics, our_depths, our_radii = project_ewa(means, covars, viewmats, Ks, 64, 48)
    assert torch.equal(radii, our_radii)
    vis = (radii > 0).all(-1)
    assert vis.sum() > 100 and (~vis).sum() > 5
    assert torch.allclose(m2d[vis], our_m2d[vis], atol=1e-9)
    assert torch.allclose(conics[vis], our_conics[vis], rtol=1e-9, atol=1e-12)
    assert torch.allclose(depths, our_depths)
    # and our quaternion/scale covariance equals gsplat's
    ref_cov, _ = impl._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    assert torch.allclose(ref_cov, covars, atol=1e-12)


def test_sh_matches_gsplat_torch_impl():
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(64, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(64, 16, 3, generator=g, dtype=torch.float64)
    for degree in range(4):
        assert torch.allclose(
            impl._spherical_harmonics(degree, dirs, coeffs), sh_to_color(degree, dirs, coeffs), atol=1e-12
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_matches_gsplat_cuda_rasterizer(mode):
    from splatting.render import gsplat_cuda

    settings = RasterSettings(mode=mode)
    means, quats, scales, opac, cols = (t.float().cuda() for t in _scene(500, 13, torch.float64, scale_lo=0.002))
    viewmats, Ks = (t.float().cuda() for t in _camera(64, 48))
    leaves = [t.requires_grad_() for t in (means, quats, scales, opac, cols)]
    ours = rasterize(means, quats, scales, opac, cols, viewmats, Ks, 64, 48, settings=settings)
    theirs = gsplat_cuda.rasterize(means, quats, scales, opac, cols, viewmats, Ks, 64, 48, settings=settings)
    assert (ours[0] - theirs[0]).abs().max() < 1e-3
    g1 = torch.autograd.grad(ours[0].sum(), leaves)
    g2 = torch.autograd.grad(theirs[0].sum(), leaves)
    for a, b in zip(g1, g2):
        assert (a - b).abs().max() < 1e-2 * max(1.0, b.abs().max().item())


def test_tile_culling_keeps_exactly_the_tiles_some_pixel_of_which_passes_the_alpha_test():
    """tile_touches against brute force over every pixel centre of every candidate tile, for oblique,
    elongated Gaussians whose bounding boxes hold many tiles they never reach."""
    g = torch.Generator().manual_seed(0)
    n, ts, tiles_x = 40, 8, 12
    means2d = torch.rand(n, 2, generator=g, dtype=torch.float64) * 96
    ang = torch.rand(n, generator=g, dtype=torch.float64) * 3.14
    sx = torch.rand(n, generator=g, dtype=torch.float64) * 15 + 1
    sy = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 0.3
    R = torch.stack([torch.stack([ang.cos(), -ang.sin()], -1), torch.stack([ang.sin(), ang.cos()], -1)], -2)
    cov = R @ torch.diag_embed(torch.stack([sx, sy], -1) ** 2) @ R.transpose(-1, -2)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    opac = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05
    tile_of = torch.arange(tiles_x * tiles_x).repeat(n)
    gauss_of = torch.arange(n).repeat_interleave(tiles_x * tiles_x)
    got = tile_touches(tile_of, gauss_of, means2d, conics, opac, ts, tiles_x, 1 / 255)
    ly, lx = torch.meshgrid(torch.arange(ts), torch.arange(ts), indexing="ij")
    local = torch.stack([lx.reshape(-1), ly.reshape(-1)], -1).double() + 0.5
    pix = torch.stack([tile_of % tiles_x, tile_of // tiles_x], -1).double()[:, None] * ts + local  # [M, P, 2]
    d = pix - means2d[gauss_of][:, None]
    a, b, c = conics[gauss_of].unbind(-1)
    sigma = 0.5 * (a[:, None] * d[..., 0] ** 2 + c[:, None] * d[..., 1] ** 2) + b[:, None] * d[..., 0] * d[..., 1]
    want = (opac[gauss_of][:, None] * torch.exp(-sigma) >= 1 / 255).any(-1)
    assert not (want & ~got).any()  # never drops a tile that some pixel needs
    assert (got & ~want).sum() <= 0.02 * want.sum()  # and keeps few that none needs (rectangle vs pixel centres)
    assert want.sum() < 0.5 * len(want)  # the case is not trivial


def test_fragments_are_kept_for_the_backward_only_when_gradients_are_needed(monkeypatch):
    from splatting.render import torch_raster

    original = torch_raster._Composite.forward
    kept = []

    def spy(ctx, *args):
        out = original(ctx, *args)
        kept.append(sum(x is not None for x in ctx.stored))
        return out

    monkeypatch.setattr(torch_raster._Composite, "forward", staticmethod(spy))
    means, quats, scales, opac, cols = _scene(60, 0, torch.float32)
    viewmats, Ks = _camera(32, 24, torch.float32)
    means.requires_grad_()
    with torch.no_grad():
        rasterize(means, quats, scales, opac, cols, viewmats, Ks, 32, 24)
    assert kept and sum(kept) == 0
    kept.clear()
    rasterize(means, quats, scales, opac, cols, viewmats, Ks, 32, 24)
    assert sum(kept) > 0


@pytest.mark.parametrize("seed,tile", [(3, 16), (4, 8)])
def test_antialiased_images_and_gradients_match_bruteforce_reference(seed, tile):
    """gsplat's antialiased mode: opacity x sqrt(det(Sigma) / det(Sigma + 0.3 I)); the reference derives the
    factor independently from the dilated conic, det(conic^-1 - 0.3 I) det(conic), then renders per pixel."""
    settings = RasterSettings(tile_size=tile, mode="antialiased")
    width, height = 37, 29
    means, quats, scales, opac, cols = _scene(70, seed, scale_lo=0.002)
    viewmats, Ks = _camera(width, height)
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (means, quats, scales, opac, cols)]
    img, alpha, _ = rasterize(
        means, quats, scales, opac, cols, viewmats, Ks, width, height, backgrounds=bg[None], settings=settings
    )
    w = torch.randn(img.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g_fast = torch.autograd.grad((img * w).sum() + (alpha * w[..., :1]).sum(), leaves)
    m2, con, dep, rad = project_ewa(means, covariance_3d(quats, scales), viewmats, Ks, width, height, settings)
    a, b, c = con[0].unbind(-1)
    det_conic = a * c - b * b
    sigma = torch.stack([c, -b, -b, a], -1).reshape(-1, 2, 2) / det_conic[:, None, None]  # conic^-1 = Sigma + 0.3 I
    sigma = sigma - 0.3 * torch.eye(2, dtype=torch.float64)
    comp = torch.sqrt((torch.linalg.det(sigma) * det_conic).clamp_min(0))
    assert comp.min() < 0.5 < comp.max()  # some Gaussians are below a pixel: the filter matters
    ref_img, ref_alpha = reference_render(m2[0], con[0], opac * comp, cols, rad[0], dep[0], width, height, bg, settings)
    g_ref = torch.autograd.grad((ref_img * w[0]).sum() + (ref_alpha * w[0, ..., :1]).sum(), leaves)
    assert (img[0] - ref_img).abs().max() < 1e-4 and (alpha[0] - ref_alpha).abs().max() < 1e-4
    classic, _, _ = rasterize(means, quats, scales, opac, cols, viewmats, Ks, width, height, backgrounds=bg[None])
    assert (classic[0] - img[0]).abs().max() > 1e-2  # the mode changes the image
    for name, x, y in zip(("means", "quats", "scales", "opacities", "colors"), g_fast, g_ref):
        assert y.abs().max() > 1e-3, name
        assert (x - y).abs().max() < 1e-4 * max(1.0, y.abs().max().item()), name
