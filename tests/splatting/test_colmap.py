"""COLMAP loading: a scene written with pycolmap round-trips; bad scenes fail with the fix in the message."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pycolmap = pytest.importorskip("pycolmap")

from splatting.colmap import SceneError, distort_points, load_scene  # noqa: E402
from splatting.synthetic import write_colmap_scene  # noqa: E402


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("colmap_scene")
    truth = write_colmap_scene(
        d,
        n_views=10,
        width=32,
        height=24,
        n_gaussians=60,
        n_points=40,
        models=("PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"),
    )
    return d, truth


def _check_round_trip(scene, truth):
    views = scene.train
    assert [v.name for v in views] == truth["names"]
    for v, c2w, K, (w, h) in zip(views, truth["c2w"], truth["K"], truth["size"]):
        assert torch.allclose(v.camtoworld, c2w.float(), atol=1e-5)
        assert torch.allclose(v.K, K, atol=1e-4)
        assert (v.width, v.height) == (w, h)
    pts = scene.points.double().numpy()
    ref = truth["points"].numpy()
    assert len(pts) == len(ref)
    np.testing.assert_allclose(np.sort(pts, axis=0), np.sort(ref, axis=0), atol=1e-5)


def test_binary_model_round_trips_cameras_poses_and_points(scene_dir):
    d, truth = scene_dir
    scene = load_scene(d, normalize=False, test_every=0)
    assert sorted(set(truth["models"])) == sorted({v.model for v in scene.train})
    _check_round_trip(scene, truth)
    img = scene.image(scene.train[4])
    assert img.shape == (24, 40, 3)  # mixed sizes: every 5th view is wider


def test_text_model_in_sparse_root_round_trips(tmp_path):
    truth = write_colmap_scene(
        tmp_path, n_views=4, width=24, height=16, n_gaussians=30, n_points=20, binary=False, sparse_subdir="sparse"
    )
    assert (tmp_path / "sparse" / "cameras.txt").exists()
    _check_round_trip(load_scene(tmp_path, normalize=False, test_every=0), truth)


def test_test_split_normalization_and_downscale(scene_dir, tmp_path):
    d, truth = scene_dir
    scene = load_scene(d, factor=2, test_every=8, cache_dir=tmp_path / "cache")
    assert [v.name for v in scene.test] == [truth["names"][0], truth["names"][8]]
    assert len(scene.train) == 8
    v = scene.test[0]
    assert (v.width, v.height) == (16, 12)
    assert torch.allclose(v.K[0, 0], truth["K"][0][0, 0] / 2, atol=1e-4)
    assert scene.image(v).shape == (12, 16, 3)
    assert list((tmp_path / "cache" / "images_2").glob("*.png"))  # resized copy cached, not in the scene
    assert not (d / "images_2").exists()
    centers = torch.stack([x.camtoworld[:3, 3] for x in scene.train + scene.test])
    rot = scene.train[0].camtoworld[:3, :3]
    assert torch.allclose(rot @ rot.T, torch.eye(3), atol=1e-5)  # rotations stay orthonormal
    assert 0.3 < centers.norm(dim=-1).median() < 3.0  # unit-ish scale
    # the similarity maps the original camera centres onto the normalized ones
    orig = torch.stack([c[:3, 3] for c in truth["c2w"]]).double()
    mapped = orig @ scene.transform[:3, :3].T + scene.transform[:3, 3]
    names = [x.name for x in scene.train + scene.test]
    order = [truth["names"].index(n) for n in names]
    assert torch.allclose(mapped[order].float(), centers, atol=1e-4)


def test_distortion_model_matches_pycolmap():
    cam = pycolmap.Camera.create_from_model_name(1, "OPENCV", 100.0, 64, 48)
    cam.params = [100.0, 90.0, 32.0, 24.0, 0.1, -0.05, 0.01, -0.02]
    xy = torch.rand(20, 2, dtype=torch.float64) - 0.5
    ours = distort_points("OPENCV", (0.1, -0.05, 0.01, -0.02), xy)
    ref = cam.img_from_cam(np.concatenate([xy.numpy(), np.ones((20, 1))], axis=1))
    ours_px = ours * torch.tensor([100.0, 90.0], dtype=torch.float64) + torch.tensor([32.0, 24.0], dtype=torch.float64)
    np.testing.assert_allclose(ours_px.numpy(), ref, atol=1e-9)


def test_missing_sparse_folder_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SceneError, match="no COLMAP model found.*sparse/0"):
        load_scene(tmp_path)


def test_missing_image_folder_and_missing_images_are_named(scene_dir, tmp_path):
    d, truth = scene_dir
    shutil.copytree(d / "sparse", tmp_path / "sparse")
    with pytest.raises(SceneError, match="image folder .* is missing"):
        load_scene(tmp_path)
    shutil.copytree(d / "images", tmp_path / "images")
    (tmp_path / "images" / truth["names"][3]).unlink()
    with pytest.raises(SceneError, match=f"1 image.*missing: {truth['names'][3]}"):
        load_scene(tmp_path)


def test_unsupported_camera_model_lists_supported_ones(tmp_path):
    write_colmap_scene(tmp_path, n_views=2, width=16, height=16, n_gaussians=10, n_points=5, models=("FULL_OPENCV",))
    with pytest.raises(SceneError, match="FULL_OPENCV.*not supported.*SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL"):
        load_scene(tmp_path)


def test_zero_registered_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera.create_from_model_name(1, "PINHOLE", 10.0, 8, 8))
    rec.write_binary(str(tmp_path / "sparse" / "0"))
    with pytest.raises(SceneError, match="zero registered images"):
        load_scene(tmp_path)
