import json

import pytest
import torch

from diffusion.cli import COMMANDS, demo_images, evaluate
from diffusion.metrics import (
    InceptionWeightsMissing,
    MetricsConfig,
    fid_kid_from_features,
    resolve_inception_path,
)
from diffusion.sample import SampleConfig
from diffusion.train import train
from genai_train.config import load_config

from .images import write_images
from .test_diffusion_train import _cfg


def _run(verb, *flags):
    cmd = COMMANDS[verb]
    args = []
    for f in flags:  # expand shortcuts the way the CLI does: --n 4 -> --n=4, --steps 2 -> --sample.steps=2
        key, value = f[2:].split("=", 1)
        args.append(f"--{cmd.shortcuts.get(key, key)}={value}")
    return cmd.run(load_config(cmd.config, None, args))


def test_train_sample_export_commands(tmp_path):
    write_images(tmp_path / "imgs", n=4, size=(16, 16))
    train(_cfg(tmp_path, "run", 2, "--ckpt.every=0"))
    _run("sample", f"--ckpt={tmp_path / 'run'}", "--n=4", "--steps=2", f"--out={tmp_path / 'grid.png'}")
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (32, 32)  # 2 x 2 grid of 16 px
    _run("export", f"--ckpt={tmp_path / 'run'}", f"--out={tmp_path / 'exp'}")
    _run("sample", f"--ckpt={tmp_path / 'exp'}", "--n=2", "--steps=2", "--size=32", f"--out={tmp_path / 'one'}")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["00000.png", "00001.png"]
    assert json.loads((tmp_path / "exp" / "edm.json").read_text())["resolution"] == 16
    with pytest.raises(ValueError, match="missing --ckpt"):
        _run("sample")
    with pytest.raises(ValueError, match="missing --ref"):
        _run("eval", f"--ckpt={tmp_path / 'run'}")
    with pytest.raises(FileNotFoundError, match="not a diffusion run folder"):
        _run("sample", f"--ckpt={tmp_path / 'imgs'}")


def test_missing_inception_weights_message(tmp_path):
    with pytest.raises(InceptionWeightsMissing, match="not found; pass metrics.inception=PATH"):
        resolve_inception_path(str(tmp_path / "none.pt"))


def test_fid_is_zero_for_identical_sets_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=g, dtype=torch.float64)
    same = fid_kid_from_features(a, a.clone(), kid_subset=100)
    shifted = fid_kid_from_features(a, a + 1.0, kid_subset=100)
    assert abs(same["fid"]) < 1e-4 and abs(same["kid"]) < shifted["kid"] / 10
    assert shifted["fid"] == pytest.approx(8.0, rel=1e-3)  # ||mu_a - mu_b||^2, equal covariances


def test_evaluate_reports_generated_and_real_floor(tmp_path):
    """Plumbing of eval with a small stand-in feature network (the real Inception is not needed here)."""
    write_images(tmp_path / "imgs", n=4, size=(16, 16))
    t = train(_cfg(tmp_path, "run", 1, "--ckpt.every=0"))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    out = evaluate(t.ema.module, t.config.edm, 16, real, 6, SampleConfig(steps=2), MetricsConfig(kid_subset=2), net=net)
    assert out["generated"]["n_fake"] == 6 and out["real_vs_real_floor"]["n_real"] == 4


def test_demo_images_are_procedural_and_deterministic(tmp_path):
    a = demo_images(tmp_path / "a", n=4)
    b = demo_images(tmp_path / "b", n=4)
    assert [p.read_bytes() for p in sorted(a.iterdir())] == [p.read_bytes() for p in sorted(b.iterdir())]
