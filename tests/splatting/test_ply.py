"""INRIA-layout PLY export and import."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("plyfile")

from splatting.gaussians import init_gaussians  # noqa: E402
from splatting.ply import PLYError, load_ply, save_ply  # noqa: E402


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_round_trip(tmp_path, degree):
    g = torch.Generator().manual_seed(degree)
    params = init_gaussians(torch.randn(50, 3, generator=g), torch.rand(50, 3, generator=g), sh_degree=degree)
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn(p.shape, generator=g))
    info = save_ply(params, tmp_path / "g.ply")
    assert info == {"written": 50, "dropped_nonfinite": 0}
    back = load_ply(tmp_path / "g.ply")
    for k, v in params.items():
        assert back[k].shape == v.shape, k
        assert torch.equal(back[k], v.detach()), k


def test_ply_has_inria_properties_in_order(tmp_path):
    from plyfile import PlyData

    params = init_gaussians(torch.randn(5, 3), torch.rand(5, 3), sh_degree=3)
    with torch.no_grad():
        params["shN"].copy_(torch.arange(5 * 15 * 3, dtype=torch.float32).reshape(5, 15, 3))
    save_ply(params, tmp_path / "g.ply")
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    names = [p.name for p in v.properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert names[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    # channel-major: f_rest_0..14 are the red channel's 15 coefficients
    assert float(v["f_rest_1"][0]) == float(params["shN"][0, 1, 0].detach())
    assert float(v["f_rest_15"][0]) == float(params["shN"][0, 0, 1].detach())


def test_nonfinite_gaussians_are_not_written(tmp_path):
    params = init_gaussians(torch.randn(6, 3), torch.rand(6, 3), sh_degree=1)
    with torch.no_grad():
        params["opacities"][2] = float("nan")
        params["scales"][4, 1] = float("inf")
    info = save_ply(params, tmp_path / "g.ply")
    assert info == {"written": 4, "dropped_nonfinite": 2}
    assert all(torch.isfinite(t).all() for t in load_ply(tmp_path / "g.ply").values())


def test_bad_ply_is_reported(tmp_path):
    import numpy as np
    from plyfile import PlyData, PlyElement

    arr = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(PLYError, match="missing properties"):
        load_ply(tmp_path / "points.ply")
    with pytest.raises(PLYError, match="does not exist"):
        load_ply(tmp_path / "nope.ply")
