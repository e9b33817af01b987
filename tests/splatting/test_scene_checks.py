"""Every image is decoded before a run writes anything; the loader's report says what was used and skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("pycolmap")

from genai_train.config import load_config  # noqa: E402
from splatting.colmap import SceneError, format_report, load_scene  # noqa: E402
from splatting.config import TrainConfig  # noqa: E402
from splatting.synthetic import write_colmap_scene  # noqa: E402
from splatting.train import train  # noqa: E402

PLUSH = Path(__file__).resolve().parents[3] / "shared" / "data" / "scenes" / "plush"


@pytest.fixture(scope="module")
def clean_scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("checks_scene")
    write_colmap_scene(d, n_views=9, width=32, height=24, n_gaussians=60, n_points=40)
    return d


def _copy(scene: Path, tmp_path: Path) -> Path:
    out = tmp_path / "scene"
    shutil.copytree(scene, out)
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _cfg(scene, run_dir, *extra: str) -> TrainConfig:
    args = [
        f"--data.root={scene}",
        "--data.factor=1",
        f"--run.dir={run_dir}",
        "--train.steps=1",
        "--sh_degree=0",
        "--run.tensorboard=false",
        "--export_ply=false",
        "--eval.save_images=false",
        "--run.threads=1",
    ]
    return load_config(TrainConfig, None, args + list(extra))


@pytest.mark.parametrize("bad", ["view_003.png", "view_008.png"], ids=["train_view", "held_out_view"])
def test_a_corrupt_photo_refuses_the_run_before_anything_is_written_and_the_option_drops_it(clean_scene, tmp_path, bad):
    scene = _copy(clean_scene, tmp_path)
    _truncate(scene / "images" / bad)
    (scene / "images" / "view_005.png").write_bytes(b"not an image at all")
    run = tmp_path / "run"
    with pytest.raises(
        SceneError, match=rf"(?s)2 image\(s\)(?=.*{bad})(?=.*view_005.png).*data.skip_unreadable=true"
    ) as err:
        train(_cfg(scene, run))
    assert "cannot be decoded" in str(err.value)
    assert not run.exists()
    with pytest.warns(UserWarning, match=rf"2 image\(s\) dropped.*{bad}"):
        s = load_scene(scene, factor=1, skip_unreadable=True)
    names = [v.name for v in s.train + s.test]
    assert bad not in names and "view_005.png" not in names and len(names) == 7
    assert [v.name for v in s.test] == [n for n in ("view_000.png", "view_008.png") if n != bad]  # split kept
    assert {x["name"] for x in s.report["skipped"] if x["reason"] == "unreadable"} == {bad, "view_005.png"}
    with pytest.warns(UserWarning):
        result = train(_cfg(scene, run, "--data.skip_unreadable=true"))
    assert result["steps_done"] == 1


def test_a_photo_of_the_wrong_size_is_named_before_the_run(clean_scene, tmp_path):
    from PIL import Image

    scene = _copy(clean_scene, tmp_path)
    Image.new("RGB", (10, 10)).save(scene / "images" / "view_002.png")
    with pytest.raises(SceneError, match=r"view_002.png \(is 10x10 but its COLMAP camera says 32x24\)"):
        train(_cfg(scene, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_report_names_sizes_held_out_views_unlisted_files_and_an_ignored_partial_images_folder(
    clean_scene, tmp_path, capsys
):
    scene = _copy(clean_scene, tmp_path)
    shutil.copy(scene / "images" / "view_001.png", scene / "images" / "extra.png")  # not in the model
    (scene / "images_2").mkdir()
    shutil.copy(scene / "images" / "view_001.png", scene / "images_2" / "view_001.png")  # 1 of 9: partial
    s = load_scene(scene, factor=2, cache_dir=tmp_path / "cache")
    r = s.report
    assert r["held_out"] == ["view_000.png", "view_008.png"]
    assert r["images"] == {"registered": 9, "used": 9, "train": 7, "test": 2, "skipped": 1}
    assert r["skipped"] == [{"name": "extra.png", "reason": "not in the COLMAP model"}]
    assert r["sizes"]["mixed"] and r["sizes"]["original"] == {"32x24": 8, "40x24": 1}
    assert r["prescaled"] == {"dir": str(scene / "images_2"), "found": 1, "needed": 9, "used": False}
    assert s.prescaled_dir is None and s.image(s.train[0]).shape == (12, 16, 3)  # resized, not the partial copy
    text = "\n".join(format_report(r))
    for part in ("MIXED sizes", "images_2 holds only 1 of 9 images: IGNORED", "not in the COLMAP model: extra.png"):
        assert part in text
    assert "held out for testing: view_000.png, view_008.png" in text
    assert "9 cameras: PINHOLE, no undistortion needed" in text
    portrait = dict(r, sizes=dict(r["sizes"], portrait=2, landscape=7, mixed_orientation=True))
    assert "portrait (2) and landscape (7) views MIXED" in "\n".join(format_report(portrait))
    train(_cfg(scene, tmp_path / "run", "--data.factor=2", f"--data.cache_dir={tmp_path / 'cache'}"))
    err = capsys.readouterr().err
    assert "held out for testing: view_000.png, view_008.png" in err and "IGNORED" in err
    assert (tmp_path / "run" / "scene.json").exists()


@pytest.mark.skipif(not PLUSH.is_dir(), reason="needs ../shared/data/scenes/plush")
def test_report_of_the_real_phone_capture_says_it_was_undistorted(tmp_path):
    s = load_scene(PLUSH, factor=8, cache_dir=tmp_path / "cache")
    (cam,) = s.report["cameras"]
    assert cam["model"] == "SIMPLE_RADIAL" and cam["undistorted"] and cam["size"] == [1000, 750]
    assert s.report["images"]["used"] == 97 and len(s.report["held_out"]) == 13
    assert "SIMPLE_RADIAL 1000x750, undistorted to a pinhole camera" in "\n".join(format_report(s.report))


def test_a_missing_photo_is_dropped_with_the_option_and_reported(clean_scene, tmp_path):
    scene = _copy(clean_scene, tmp_path)
    (scene / "images" / "view_004.png").unlink()
    with pytest.raises(SceneError, match="missing: view_004.png.*data.skip_unreadable=true"):
        load_scene(scene, factor=1)
    with pytest.warns(UserWarning, match=r"view_004.png \(missing file\)"):
        s = load_scene(scene, factor=1, skip_unreadable=True)
    assert "view_004.png" not in [v.name for v in s.train + s.test]
    assert s.report["skipped"] == [{"name": "view_004.png", "reason": "missing file"}]
    assert "skipped, missing file: view_004.png" in "\n".join(format_report(s.report))
