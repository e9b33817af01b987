"""Training on a tiny generated COLMAP scene: loss falls, resume is exact, NaNs never reach a checkpoint."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pycolmap")

from genai_train.checkpoint import Checkpointer  # noqa: E402
from genai_train.config import ConfigError, load_config  # noqa: E402
from splatting.cli import COMMANDS  # noqa: E402
from splatting.config import ExportCommandConfig, TrainConfig  # noqa: E402
from splatting.evaluate import run_export  # noqa: E402
from splatting.synthetic import write_colmap_scene  # noqa: E402
from splatting.train import train  # noqa: E402


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_scene")
    write_colmap_scene(d, n_views=9, width=32, height=24, n_gaussians=80, n_points=60)
    return d


def _cfg(scene, run_dir, steps=14, **extra):
    overrides = [
        f"--data.root={scene}",
        "--data.factor=1",
        f"--run.dir={run_dir}",
        f"--train.steps={steps}",
        "--sh_degree=1",
        "--sh_degree_interval=5",
        "--strategy.refine_start=3",
        "--strategy.refine_every=3",
        "--strategy.reset_every=7",
        "--strategy.grow_grad2d=1e-6",
        "--ckpt.every=100",
        "--run.log_every=1",
        "--render.tile_size=8",
        "--export_ply=false",
        "--render.background=random",
        "--run.threads=1",
    ]
    overrides += [f"--{k}={v}" for k, v in extra.items()]
    return load_config(TrainConfig, None, overrides)


@pytest.mark.parametrize("strategy", ["adc", "steepgs"])
def test_resume_matches_uninterrupted_run(scene, tmp_path, strategy):
    full = train(_cfg(scene, tmp_path / "a", **{"strategy.name": strategy}))
    assert full["n_gaussians"] != 60  # densification ran
    part = train(_cfg(scene, tmp_path / "b", **{"strategy.name": strategy}), stop_after=8)
    assert part["steps_done"] == 8
    rest = train(_cfg(scene, tmp_path / "b", **{"strategy.name": strategy}))
    assert rest["steps_done"] == 14
    a = Checkpointer(tmp_path / "a" / "ckpt").load_latest()
    b = Checkpointer(tmp_path / "b" / "ckpt").load_latest()
    assert a[0] == b[0] == 14
    for k, v in a[1]["gaussians"].items():
        assert torch.equal(v, b[1]["gaussians"][k]), k
    for k in a[1]["optimizers"]:
        sa, sb = a[1]["optimizers"][k]["state"][0], b[1]["optimizers"][k]["state"][0]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert full["test"]["psnr"] == rest["test"]["psnr"]


def test_steepgs_densifies_differently_from_adc_and_logs_the_gaussian_count(scene, tmp_path):
    import json

    adc = train(_cfg(scene, tmp_path / "adc"))
    steep = train(_cfg(scene, tmp_path / "steep", **{"strategy.name": "steepgs"}))
    assert steep["n_gaussians"] != adc["n_gaussians"]
    rows = [json.loads(x) for x in (tmp_path / "steep" / "metrics.jsonl").read_text().splitlines()]
    counts = [r["n_gaussians"] for r in rows if "n_gaussians" in r]
    assert len(counts) >= 10 and len(set(counts)) > 1  # the count over time is in the logs
    with pytest.raises(ConfigError, match="is not one of 'adc', 'steepgs', 'mcmc'"):
        _cfg(scene, tmp_path / "x", **{"strategy.name": "bogus"})


def test_training_improves_test_psnr(scene, tmp_path):
    short = train(_cfg(scene, tmp_path / "s", steps=1, **{"strategy.refine_start": 1000}))
    longer = train(
        _cfg(scene, tmp_path / "l", steps=150, **{"strategy.refine_start": 1000, "render.background": "white"})
    )
    assert longer["test"]["psnr"] > short["test"]["psnr"] + 2.0


def test_nonfinite_parameters_skip_steps_and_are_never_checkpointed(scene, tmp_path):
    run = tmp_path / "nan"
    train(_cfg(scene, run, steps=10), stop_after=4)
    ck = Checkpointer(run / "ckpt", task="splat")
    step, state = ck.load_latest()
    state["gaussians"]["opacities"][0] = float("nan")
    ck.save(step, state)  # a corrupted state, as if a NaN had slipped in
    result = train(_cfg(scene, run, steps=10))
    assert result["skipped_steps"] == 6
    assert ck.complete_steps() == [4]  # the final save was refused
    with pytest.raises(ValueError, match="no complete checkpoint"):
        run_export(ExportCommandConfig(run_dir=str(tmp_path / "empty")))


def test_bad_inputs_are_explained(tmp_path):
    with pytest.raises(ValueError, match="no scene given"):
        train(load_config(TrainConfig, None, [f"--run.dir={tmp_path / 'r'}"]))
    with pytest.raises(ConfigError, match="did you mean 'factor'"):
        load_config(TrainConfig, None, ["--data.factr=2"])
    with pytest.raises(ConfigError, match="sh_degree must be in 0..3"):
        load_config(TrainConfig, None, ["--sh_degree=4"])


def test_cli_table_and_export(scene, tmp_path):
    assert set(COMMANDS) == {"train", "eval", "render", "export", "view"}
    assert COMMANDS["train"].shortcuts["scene"] == "data.root"
    run = tmp_path / "e"
    train(_cfg(scene, run, steps=3))
    out = run_export(ExportCommandConfig(run_dir=str(run), out=str(tmp_path / "x.ply")))
    assert out["written"] > 0 and (tmp_path / "x.ply").exists()


def test_resume_refuses_a_changed_sh_degree(scene, tmp_path):
    run = tmp_path / "sh"
    train(_cfg(scene, run, steps=4), stop_after=2)
    with pytest.raises(ConfigError, match="cannot resume.*sh_degree"):
        train(_cfg(scene, run, steps=4, sh_degree=2))


def test_random_init_adds_points_inside_the_cube(scene, tmp_path):
    from splatting.colmap import load_scene
    from splatting.train import initial_points

    sc = load_scene(str(scene), 1)
    cfg = _cfg(scene, tmp_path / "r", init_random=500, init_extent=2.0, init_views=0, init_color="random")
    pts, cols = initial_points(sc, cfg, torch.Generator().manual_seed(0))
    n = len(sc.points)
    assert pts.shape == (n + 500, 3) and cols.shape == (n + 500, 3)
    assert torch.equal(pts[:n], sc.points) and torch.equal(cols[:n], sc.point_colors)
    extra = pts[n:] / (2.0 * sc.scene_scale)
    assert extra.abs().max() <= 1 and extra.abs().max() > 0.95 and extra.mean(0).abs().max() < 0.1  # fills it
    assert 0 <= cols[n:].min() and cols[n:].max() <= 1
    plain, _ = initial_points(sc, _cfg(scene, tmp_path / "p"), torch.Generator().manual_seed(0))
    assert torch.equal(plain, sc.points)
    with pytest.raises(ConfigError, match="init_random must be >= 0"):
        _cfg(scene, tmp_path / "x", init_random=-1)
    with pytest.raises(ConfigError, match="init_views must be >= 0"):
        _cfg(scene, tmp_path / "x", init_views=-1)


def test_random_init_keeps_points_training_views_see_coloured_by_their_pixels(scene, tmp_path):
    from splatting.colmap import load_scene
    from splatting.train import initial_points

    sc = load_scene(str(scene), 1)
    n = len(sc.points)
    cfg = _cfg(scene, tmp_path / "r", init_random=300, init_extent=3.0, init_views=2)
    pts, cols = initial_points(sc, cfg, torch.Generator().manual_seed(0))
    extra, extra_cols = pts[n:], cols[n:]
    assert len(extra) == 300 and (extra.abs() <= 3.0 * sc.scene_scale).all()
    # brute force per point and view: in front of the camera and inside the image, pixel colours averaged
    for p, c in zip(extra[:40], extra_cols[:40]):
        seen = []
        for v in sc.train:
            q = torch.linalg.inv(v.camtoworld)[:3].double() @ torch.cat([p.double(), torch.ones(1).double()])
            if q[2] <= 1e-2:
                continue
            u = v.K[0, 0] * q[0] / q[2] + v.K[0, 2]
            w = v.K[1, 1] * q[1] / q[2] + v.K[1, 2]
            if 0 <= u < v.width and 0 <= w < v.height:
                seen.append(sc.image(v)[int(w), int(u)])
        assert len(seen) >= 2
        torch.testing.assert_close(c, torch.stack(seen).mean(0), atol=1e-5, rtol=0)
    # a cube much larger than the views' reach: most draws are rejected, the count still holds
    cfg = _cfg(scene, tmp_path / "r", init_random=100, init_extent=30.0, init_views=1)
    far = initial_points(sc, cfg, torch.Generator().manual_seed(1))[0][n:]
    assert len(far) == 100


def test_regularizers_add_their_closed_form_to_loss_and_gradient():
    from splatting.train import training_loss

    g = torch.Generator().manual_seed(0)
    params = {
        "opacities": torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True),
        "scales": torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True),
    }
    img, gt = (
        torch.rand(16, 16, 3, generator=g, dtype=torch.float64),
        torch.rand(16, 16, 3, generator=g, dtype=torch.float64),
    )
    base, l1 = training_loss(img, gt, params, TrainConfig())
    assert float(l1) == pytest.approx(float((img - gt).abs().mean()))
    cfg = TrainConfig(opacity_reg=0.3, scale_reg=0.05)
    loss, _ = training_loss(img, gt, params, cfg)
    o, s = params["opacities"].detach(), params["scales"].detach()
    expected = base + 0.3 * torch.sigmoid(o).mean() + 0.05 * torch.exp(s).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-12)
    loss.backward()
    sig = torch.sigmoid(o)
    torch.testing.assert_close(params["opacities"].grad, 0.3 * sig * (1 - sig) / 7)
    torch.testing.assert_close(params["scales"].grad, 0.05 * torch.exp(s) / 21)
    with pytest.raises(ValueError, match="opacity_reg and scale_reg must be >= 0"):
        TrainConfig(opacity_reg=-1.0)
