"""SteepGS's fused splitting-matrix kernel against its torch twin, through Triton's interpreter on the CPU and,
where CUDA is present, compiled on the GPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from splatting.render.torch_raster import rasterize  # noqa: E402
from splatting.strategies.steepgs import SteepGSStrategy  # noqa: E402


def _scene(n: int, views: int, dev: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = {
        "means": (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([3.0, 3.0, 1.0]) + torch.tensor([0, 0, 4.0]),
        "scales": torch.rand(n, 3, generator=g) * 0.1 + 0.02,
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.rand(n, generator=g) * 0.8 + 0.1,
        "colors": torch.rand(n, 3, generator=g),
    }
    params = {k: v.to(dev).requires_grad_() for k, v in params.items()}
    angles = torch.linspace(-0.2, 0.2, views)
    viewmats = torch.eye(4).repeat(views, 1, 1)
    viewmats[:, 0, 0], viewmats[:, 0, 2] = torch.cos(angles), torch.sin(angles)
    viewmats[:, 2, 0], viewmats[:, 2, 2] = -torch.sin(angles), torch.cos(angles)
    viewmats[:, 0, 3] = angles
    Ks = torch.tensor([[24.0, 0, 12.0], [0, 20.0, 10.0], [0, 0, 1]]).repeat(views, 1, 1)
    viewmats, Ks = viewmats.to(dev), Ks.to(dev)
    img, _, info = rasterize(
        params["means"], params["quats"], params["scales"], params["opacities"], params["colors"], viewmats, Ks, 24, 20,
        backgrounds=torch.zeros(views, 3, device=dev),
    )  # fmt: skip
    info["viewmats"], info["Ks"] = viewmats, Ks
    target = torch.rand(img.shape, generator=g).to(dev)
    return params, info, ((img - target) ** 2).mean()


@pytest.mark.parametrize("n,views", [(1, 1), (37, 2), (300, 3)])  # below, at and above one block of 128
def test_fused_splitting_matrices_equal_the_torch_twin(kernel_device, n, views):
    params, info, loss = _scene(n, views, kernel_device)
    results = []
    strategies = [
        SteepGSStrategy(kernels="torch", min_decrease_pixels=0),
        SteepGSStrategy(kernels="triton", min_decrease_pixels=0),
    ]
    states = [s.initialize_state() for s in strategies]
    for s, st in zip(strategies, states):
        s.step_pre_backward(params, {}, st, 0, info)
    loss.backward()
    for s, st in zip(strategies, states):
        s._accumulate(params, st, info)
        s._accumulate(params, st, info)  # accumulates: twice the one-view sum
        results.append(st["S"])
    twin, fused = results
    visible = (info["radii"] > 0).all(-1).any(0)
    assert visible.any() and (twin[~visible] == 0).all() and (fused[~visible] == 0).all()
    rel = ((fused - twin).norm(dim=(1, 2)) / twin.norm(dim=(1, 2)).clamp_min(1e-30))[visible]
    assert rel.max() < 1e-6, rel.max()
    assert torch.equal(fused, fused.transpose(1, 2))
