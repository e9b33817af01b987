"""Patch Diffusion on folders it has never seen: PGM faces, non-square photos, class subfolders; the export as a
diffusers pipeline; precision and progress lines. Tiny UNets at 8 px, one or two steps each."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import DataConfig, crop_to_square, load_image_folder
from diffusion.sample import SampleConfig, generate, guided_denoiser
from diffusion.train import DiffusionConfig, diffusion_loss, load_run, train
from genai_train.config import load_config

TINY8 = [
    "--data.resolution=8",
    "--data.batch_size=2",
    "--model.block_out_channels=[8,16]",
    "--model.attention=[false,false]",
    "--model.norm_num_groups=4",
    "--model.attention_head_dim=8",
    "--model.layers_per_block=1",
    "--schedule.warmup_steps=1",
    "--ema.half_life_steps=1",
    "--preview.every=0",
    "--run.log_every=1",
    "--run.tensorboard=false",
    "--run.device=cpu",
]


def _cfg(data, run, steps=1, *extra):
    return load_config(
        DiffusionConfig, None, [f"--data.root={data}", f"--run.dir={run}", f"--train.steps={steps}", *TINY8, *extra]
    )


def _classes(folder, names=("cat", "dog"), n=3, size=(10, 8)):
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = (rng.random((*size, 3)) * 80 + 100 * k).astype(np.uint8)
            Image.fromarray(arr).save(folder / name / f"{i}.jpg", quality=95)
    return folder


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A class-conditional run (2 classes, label dropout 0.5) trained 2 steps, and its export."""
    tmp = tmp_path_factory.mktemp("cond")
    data = _classes(tmp / "pets")
    t = train(_cfg(data, tmp / "run", 2, "--data.labels=folders", "--model.label_dropout=0.5"))
    return tmp, t


def test_pgm_faces_train_as_one_channel(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "faces").mkdir()
    for i in range(3):
        Image.fromarray((rng.random((12, 10)) * 255).astype(np.uint8), "L").save(tmp_path / "faces" / f"{i}.pgm")
    t = train(_cfg(tmp_path / "faces", tmp_path / "run"))
    out = capsys.readouterr()
    assert "data.channels=auto: all 3 images are grayscale, training a 1-channel model" in out.out
    assert "data.crop=center: 3 of 3 images are not square and were cut to their centre square" in out.out
    assert t.model.img_channels == 1 and t.config.data.channels == 1
    assert load_run(tmp_path / "run")[1].data.channels == 1  # the run saved the resolved value


def test_colour_folder_keeps_rgb_and_says_so(tmp_path):
    from .images import write_images

    write_images(tmp_path / "d", n=2, size=(8, 8))
    msgs = []
    imgs, report = load_image_folder(DataConfig(root=str(tmp_path / "d"), resolution=8), log=msgs.append)
    assert imgs.shape[1] == 3 and report.channels == 3
    assert any("2 of 2 images have colour, training an RGB model" in m for m in msgs)


def test_crop_policies_match_their_closed_form():
    """A 4 x 8 image (H x W): no resampling is needed for center/random (R = 4) or pad (R = 8)."""
    arr = np.arange(32, dtype=np.float32).reshape(4, 8, 1) / 32  # [H, W, 1]
    img = arr[..., 0]
    assert np.array_equal(crop_to_square(arr, 4, "center")[0], img[:, 2:6])
    rng_a, rng_b = np.random.default_rng([0, 3]), np.random.default_rng([0, 3])
    g = np.random.default_rng([0, 3])
    top, left = int(g.integers(0, 1)), int(g.integers(0, 5))  # (top, left) drawn in that order
    assert top == 0
    rand = crop_to_square(arr, 4, "random", rng=rng_a)[0]
    assert np.array_equal(rand, img[:, left : left + 4])
    assert np.array_equal(rand, crop_to_square(arr, 4, "random", rng=rng_b)[0])  # fixed by the seed
    pad = crop_to_square(arr, 8, "pad", background=(0.25,))[0]
    assert np.array_equal(pad[2:6], img) and (pad[:2] == 0.25).all() and (pad[6:] == 0.25).all()
    rows = np.repeat(np.linspace(0, 1, 4, dtype=np.float32)[:, None, None], 8, axis=1)  # constant along a row
    res = crop_to_square(rows, 4, "resize")[0]  # width 8 -> 4: every row keeps its value
    assert np.allclose(res, rows[:, :4, 0], atol=1e-6)


@pytest.mark.parametrize("crop", ["center", "random", "resize", "pad"])
def test_non_square_folder_trains_with_each_crop(tmp_path, crop, capsys):
    from .images import write_images

    write_images(tmp_path / "photos", n=2, size=(8, 12))
    t = train(_cfg(tmp_path / "photos", tmp_path / "run", 1, f"--data.crop={crop}"))
    assert t.step == 1
    assert f"data.crop={crop}: 2 of 2 images are not square" in capsys.readouterr().out


def test_formats_pillow_reads_are_accepted(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.ppm")
    Image.fromarray(rgb).save(tmp_path / "b.tiff")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "c.pgm")
    imgs, report = load_image_folder(DataConfig(root=str(tmp_path), resolution=8), log=lambda *_: None)
    assert imgs.shape == (3, 3, 8, 8) and not report.skipped


def test_class_subfolders_without_labels_get_a_hint(tmp_path):
    _classes(tmp_path / "pets")
    msgs = []
    _, report = load_image_folder(DataConfig(root=str(tmp_path / "pets"), resolution=8), log=msgs.append)
    assert report.labels is None
    assert any("found 2 class subfolders (cat, dog)" in m and "--data.labels=folders" in m for m in msgs)
    _, report = load_image_folder(
        DataConfig(root=str(tmp_path / "pets"), resolution=8, labels="folders"), log=lambda *_: None
    )
    assert report.classes == ["cat", "dog"] and report.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_p0_logs_the_patch_sizes_actually_used(tmp_path, capsys):
    from .images import write_images

    write_images(tmp_path / "d", n=2, size=(8, 8))
    train(_cfg(tmp_path / "d", tmp_path / "run", 1, "--patch.p=0"))
    err = capsys.readouterr().err
    assert "patch sizes used 2 (40%), 4 (60%) (p=0.0" in err


def test_class_conditional_samples_depend_on_the_class_and_guidance_1_is_conditional(cond_run):
    tmp, t = cond_run
    model, cfg, _ = load_run(tmp / "run")
    assert model.classes == ["cat", "dog"] and model.unet.config.num_class_embeds == 3
    scfg = SampleConfig(steps=2)
    cat = generate(model, 2, scfg, cfg.edm, 8, seed=3, class_labels="cat")
    dog = generate(model, 2, scfg, cfg.edm, 8, seed=3, class_labels="dog")
    assert not torch.equal(cat, dog)
    both = generate(model, 2, scfg, cfg.edm, 8, seed=3)  # round robin: cat, dog
    assert torch.equal(both[0], cat[0]) and torch.equal(both[1], dog[1])
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])
    grid = torch.randn(2, 2, 8, 8)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        cond, uncond = model(x, sigma, grid, labels), model(x, sigma, grid)
        assert torch.equal(guided_denoiser(model, grid, labels, 1.0)(x, sigma), cond)
        w2 = guided_denoiser(model, grid, labels, 2.0)(x, sigma)
    assert torch.allclose(w2, uncond + 2 * (cond - uncond), atol=1e-5)
    assert torch.equal(uncond, model(x, sigma, grid, torch.full((2,), 2)))  # the null class index is K


def test_label_dropout_reaches_the_null_class():
    """The dropped rows of a seeded batch are sent to the UNet with the null class index K."""
    from diffusion.data import PatchBatch
    from diffusion.edm import EDMConfig

    seen = []

    def model(x, sigma, pos, labels):
        seen.append(labels.clone())
        return x

    n = 64
    batch = PatchBatch(torch.zeros(n, 3, 4, 4), torch.zeros(n, 2, 4, 4), torch.arange(n), n, torch.ones(n).long())
    torch.manual_seed(5)
    diffusion_loss(EDMConfig(), label_dropout=0.3, null_class=2)(model, batch)
    torch.manual_seed(5)
    torch.randn(n), torch.randn(n, 3, 4, 4)  # sigma and noise come first
    expect = torch.where(torch.rand(n) < 0.3, 2, 1)
    assert torch.equal(seen[0], expect) and 5 < (expect == 2).sum() < 35


def _export(run, out):
    from diffusion.cli import ExportCommandConfig, run_export

    run_export(ExportCommandConfig(ckpt=str(run), out=str(out)))
    return out


@pytest.mark.parametrize("conditional", [False, True])
def test_export_opens_as_a_diffusers_pipeline_with_the_same_images(tmp_path, cond_run, conditional):
    from diffusers import DiffusionPipeline, UNet2DModel

    from diffusion.export import load_any

    if conditional:
        run = cond_run[0] / "run"
    else:
        from .images import write_images

        write_images(tmp_path / "d", n=2, size=(8, 8))
        train(_cfg(tmp_path / "d", tmp_path / "run", 1))
        run = tmp_path / "run"
    out = _export(run, tmp_path / "exp")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "PatchDiffusionPipeline"] and (out / "pipeline.py").exists()
    assert UNet2DModel.from_pretrained(out, subfolder="unet").config.in_channels == 5
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    kw = {"class_labels": "dog", "guidance_scale": 2.0} if conditional else {}
    got = pipe(num_images=2, seed=4, num_inference_steps=2, output_type="pt", **kw).images
    model, edm, res = load_any(run)  # what `genai-train diffusion sample --ckpt RUN` samples
    scfg = SampleConfig(steps=2, guidance=kw.get("guidance_scale", 1.0))
    ours = generate(model, 2, scfg, edm, res, seed=4, class_labels=kw.get("class_labels"))
    assert torch.equal(got, (ours.clamp(-1, 1) + 1) / 2)
    assert pipe.config.class_names == (["cat", "dog"] if conditional else [])
    pil = pipe(num_images=1, seed=4, num_inference_steps=2).images
    assert pil[0].size == (8, 8)


def test_sample_command_with_class_and_guidance(cond_run, capsys):
    from diffusion.cli import COMMANDS

    tmp, _ = cond_run
    cmd = COMMANDS["sample"]
    args = [f"--ckpt={tmp / 'run'}", "--n=2", "--sample.steps=2", f"--out={tmp / 'dogs.png'}"]
    cmd.run(load_config(cmd.config, None, [*args, "--class_name=dog", "--sample.guidance=2"]))
    assert "class dog, guidance 2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown class 'cow'; this model knows cat, dog"):
        cmd.run(load_config(cmd.config, None, [*args, "--class_name=cow"]))


def test_cpu_bf16_autocast_and_gradient_checkpointing_are_used_and_reported(tmp_path, capsys):
    from .images import write_images

    write_images(tmp_path / "d", n=2, size=(8, 8))
    cfg = _cfg(tmp_path / "d", tmp_path / "run", 1, "--run.precision=bf16", "--model.gradient_checkpointing=true")
    from diffusion.train import make_trainer

    t = make_trainer(cfg)
    dtypes = []
    t.model.unet.conv_in.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    try:
        t.fit()
    finally:
        t.close()
    err = capsys.readouterr().err
    assert dtypes and dtypes[0] == torch.bfloat16
    assert "precision: bf16 autocast on cpu" in err and "gradient checkpointing: on" in err
    assert t.model.unet.is_gradient_checkpointing


def test_loss_per_pixel_and_patch_size_are_logged_and_slow_cpu_hint(tmp_path, capsys, monkeypatch):
    from diffusion.train import ProgressLog

    from .images import write_images

    monkeypatch.setattr(ProgressLog, "slow_cpu_s", 0.0)
    monkeypatch.setattr(ProgressLog, "large_params", 0)
    write_images(tmp_path / "d", n=2, size=(8, 8))
    t = train(_cfg(tmp_path / "d", tmp_path / "run", 2, "--patch.p=0"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    loss = {r["step"]: r["loss"] for r in rows if "loss" in r}
    px = {r["step"]: (r["loss_px"], r["patch"]) for r in rows if "loss_px" in r}
    for step, (value, patch) in px.items():
        assert patch in (2, 4) and value == pytest.approx(loss[step] / (3 * patch * patch), rel=1e-5)
    assert "hint: one step took" in capsys.readouterr().err and t.step == 2
