"""``genai-train splat view``: the parameters as viser takes them, clear errors, and (where a Chromium exists) a
headless browser that sees the Gaussians."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("plyfile")

from genai_train.cli import main as cli_main  # noqa: E402
from splatting.config import ViewCommandConfig  # noqa: E402
from splatting.gaussians import covariance_3d, init_gaussians, sh_to_rgb  # noqa: E402
from splatting.ply import save_ply  # noqa: E402
from splatting.synthetic import make_gt_gaussians  # noqa: E402
from splatting.view import default_camera, run_view, viser_arrays  # noqa: E402


def _scene_params(sh_degree: int = 1) -> torch.nn.ParameterDict:
    """The synthetic scene's Gaussians (a coloured ring around a ball), opaque enough to see."""
    gt = make_gt_gaussians(300)
    p = init_gaussians(gt["means"], gt["colors"], sh_degree=sh_degree, init_opacity=0.9)
    with torch.no_grad():
        p["scales"].copy_(torch.log(gt["scales"] * 1.5))
        p["quats"].copy_(gt["quats"])
    return p


def test_viser_arrays_are_our_parameters_activated():
    p = _scene_params()
    a = viser_arrays(p)
    n = p["means"].shape[0]
    assert a["centers"].shape == (n, 3) and a["covariances"].shape == (n, 3, 3)
    assert a["rgbs"].shape == (n, 3) and a["opacities"].shape == (n, 1)
    cov = covariance_3d(p["quats"].detach(), p["scales"].detach().exp()).numpy()
    np.testing.assert_allclose(a["covariances"], cov, rtol=1e-6)
    np.testing.assert_allclose(a["rgbs"], sh_to_rgb(p["sh0"].detach()[:, 0]).clamp(0, 1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(a["opacities"][:, 0], 0.9, rtol=1e-5)
    with torch.no_grad():
        p["means"][3] = float("nan")
    assert viser_arrays(p)["centers"].shape == (n - 1, 3)  # non-finite Gaussians are left out


def test_missing_run_or_ply_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        run_view(ViewCommandConfig(run=str(tmp_path / "nope"), seconds=0.1))
    with pytest.raises(FileNotFoundError, match="no such file"):
        run_view(ViewCommandConfig(ply=str(tmp_path / "nope.ply"), seconds=0.1))
    with pytest.raises(ValueError, match="--run DIR .* or --ply FILE"):
        run_view(ViewCommandConfig(seconds=0.1))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ValueError, match="no complete checkpoint"):
        run_view(ViewCommandConfig(run=str(tmp_path / "empty_run"), seconds=0.1))
    assert cli_main(["splat", "view", "--run", str(tmp_path / "nope"), "--seconds", "0.1"]) != 0
    assert "no such run folder" in capsys.readouterr().err


def test_missing_viser_is_a_clear_error(tmp_path, monkeypatch):
    save_ply(_scene_params(), tmp_path / "g.ply")
    monkeypatch.setitem(sys.modules, "viser", None)  # import viser raises ImportError
    with pytest.raises(RuntimeError, match="pip install viser"):
        run_view(ViewCommandConfig(ply=str(tmp_path / "g.ply"), port=0, seconds=0.1))


def test_view_command_serves_a_ply_and_stops_after_seconds(tmp_path, capsys):
    pytest.importorskip("viser")
    save_ply(_scene_params(), tmp_path / "g.ply")
    assert cli_main(["splat", "view", "--ply", str(tmp_path / "g.ply"), "--port", "0", "--seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "viewer: http://localhost:" in out and "300 Gaussians" in out


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _screenshot(browser: str, url: str, path, budget_ms: int = 8000) -> np.ndarray:
    import imageio.v3 as iio

    cmd = [
        browser,
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--use-gl=swiftshader",
        "--enable-unsafe-swiftshader",
        "--window-size=640,480",
        f"--virtual-time-budget={budget_ms}",
        f"--screenshot={path}",
        url,
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    return iio.imread(path)[..., :3].astype(np.float64)


def test_headless_browser_sees_the_gaussians(tmp_path):
    pytest.importorskip("viser")
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium browser here (chromium / chromium-browser); .ci/run installs one")
    from splatting.view import start_viewer

    params = _scene_params()
    camera = default_camera(viser_arrays(params)["centers"], [])
    with_scene = start_viewer(params, [], port=0, camera=camera)
    empty = start_viewer(None, [], port=0, camera=camera)  # the same camera, no Gaussians
    try:
        b = _screenshot(browser, f"http://localhost:{empty.get_port()}", tmp_path / "empty.png")
        # on a loaded machine the page's virtual time can run out before the splats arrive over the websocket and
        # are sorted: retake the scene's shot (longer budget) while its open canvas still equals the empty one's
        for budget in (8000, 15000, 30000, 60000, 60000):
            a = _screenshot(browser, f"http://localhost:{with_scene.get_port()}", tmp_path / "scene.png", budget)
            diff = np.abs(a - b).max(-1)
            canvas = diff[200:400, :180]  # the canvas left of viser's control panel and below its notice
            if (canvas > 30).mean() > 0.05:
                break
    finally:
        with_scene.stop()
        empty.stop()
    print(
        f"virtual-time budget {budget} ms: mean |diff| {diff.mean():.2f}, pixels differing by >30: "
        f"{(diff > 30).mean():.1%} of the page, {(canvas > 30).mean():.1%} of the open canvas"
    )
    assert (diff > 30).mean() > 0.02
    assert (canvas > 30).mean() > 0.05
