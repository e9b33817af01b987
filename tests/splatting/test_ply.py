"""INRIA-layout PLY export and import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


FIGURINE = Path(__file__).resolve().parents[3] / "shared" / "data" / "scenes" / "figurine"


def _random_similarity(seed: int) -> torch.Tensor:
    from splatting.gaussians import quat_to_rotmat

    g = torch.Generator().manual_seed(seed)
    t = torch.eye(4, dtype=torch.float64)
    t[:3, :3] = 0.37 * quat_to_rotmat(torch.randn(4, generator=g, dtype=torch.float64))
    t[:3, 3] = torch.randn(3, generator=g, dtype=torch.float64) * 5
    return t


@pytest.mark.parametrize("degree", [0, 3])
def test_import_inverts_export_in_the_colmap_frame(tmp_path, degree):
    g = torch.Generator().manual_seed(1)
    params = init_gaussians(torch.randn(40, 3, generator=g), torch.rand(40, 3, generator=g), sh_degree=degree)
    with torch.no_grad():
        params["shN"].normal_(generator=g)
    t = _random_similarity(degree)
    save_ply(params, tmp_path / "g.ply", transform=t)
    raw = load_ply(tmp_path / "g.ply")
    assert not torch.allclose(raw["means"], params["means"].detach(), atol=1e-2)  # really written in another frame
    back = load_ply(tmp_path / "g.ply", transform=t)
    for k, v in params.items():
        assert torch.allclose(back[k], v.detach(), atol=1e-5, rtol=1e-5), k


def test_moved_gaussians_render_the_same_image_from_the_moved_camera():
    """Means, scales, rotations and view-dependent colour all move with the world: same pixels."""
    from splatting.gaussians import transform_gaussians
    from splatting.render.torch_raster import rasterize
    from splatting.synthetic import look_at

    g = torch.Generator().manual_seed(2)
    params = init_gaussians(torch.randn(30, 3, generator=g) * 0.5, torch.rand(30, 3, generator=g), sh_degree=2)
    with torch.no_grad():
        params["shN"].normal_(generator=g)
        params["scales"].add_(torch.randn(30, 3, generator=g) * 0.3)
    t = _random_similarity(3)
    moved = transform_gaussians(params, t)
    c2w = look_at(torch.tensor([0.0, -3.0, 1.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])).double()
    c2w_moved = t @ c2w
    c2w_moved[:3, :3] /= torch.linalg.norm(t[:3, 0])
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]])

    def draw(p, cam):
        colors = torch.cat([p["sh0"], p["shN"]], dim=1)
        img, _, _ = rasterize(
            p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), colors,
            torch.linalg.inv(cam).float()[None], K[None], 32, 24, sh_degree=2,
        )  # fmt: skip
        return img

    with torch.no_grad():
        assert torch.allclose(draw(params, c2w), draw(moved, c2w_moved), atol=1e-4)


@pytest.mark.skipif(not FIGURINE.is_dir(), reason="needs ../shared/data/scenes/figurine")
def test_exporting_the_sfm_initialisation_gives_back_the_colmap_points(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    from splatting.colmap import load_scene

    scene = load_scene(FIGURINE, factor=8, cache_dir=tmp_path / "cache")
    params = init_gaussians(scene.points, scene.point_colors, sh_degree=1)
    save_ply(params, tmp_path / "init.ply", transform=scene.transform)
    rec = pycolmap.Reconstruction(str(FIGURINE / "sparse" / "0"))
    ref = torch.from_numpy(np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64))
    got = load_ply(tmp_path / "init.ply")["means"].double()
    assert (got - ref).abs().max() < 1e-5
    # the cameras overlay too: normalized camera centres mapped back are COLMAP's projection centres
    inv = torch.linalg.inv(scene.transform)
    for v in scene.train[:3]:
        center = inv[:3, :3] @ v.camtoworld[:3, 3].double() + inv[:3, 3]
        im = next(i for i in rec.images.values() if i.name == v.name)
        assert torch.allclose(center, torch.tensor(im.projection_center()), atol=1e-4)
