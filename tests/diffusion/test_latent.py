"""Latent Patch Diffusion with a tiny AutoencoderKL saved to a folder (no hub)."""

import pytest
import torch

from diffusion.latent import LatentDecoder, VAEError, encode, load_vae
from diffusion.sample import SampleConfig, generate
from diffusion.train import DiffusionConfig, load_run, train
from genai_train.config import ConfigError, load_config

from .images import write_images
from .test_real_data import TINY8


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    folder = tmp_path_factory.mktemp("vae") / "tiny_vae"
    vae.save_pretrained(folder)
    return folder


def _cfg(tmp_path, vae_dir, run, steps, *extra):
    return load_config(
        DiffusionConfig,
        None,
        [
            f"--data.root={tmp_path / 'imgs'}",
            f"--run.dir={tmp_path / run}",
            f"--train.steps={steps}",
            *TINY8,
            "--data.resolution=16",  # latents 4 x 8 x 8
            f"--model.vae={vae_dir}",
            *extra,
        ],
    )


def test_tiny_autoencoder_round_trip(vae_dir):
    vae = load_vae(vae_dir)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    z = encode(vae, x, batch_size=2)
    assert z.shape == (3, 4, 8, 8) and torch.equal(z, encode(vae, x, batch_size=2))  # posterior mean: no noise
    assert torch.allclose(z, encode(vae, x), atol=1e-5)  # other batching: the same up to rounding
    back = LatentDecoder(vae)(z)
    assert back.shape == x.shape and torch.isfinite(back).all()
    with torch.no_grad():
        direct = vae.decode(vae.encode(x).latent_dist.mean).sample
    assert torch.allclose(back, direct, atol=1e-5)  # scaling_factor cancels between encode and decode


def test_three_latent_steps_resume_bit_exactly_sample_and_export_pixels(tmp_path, vae_dir, capsys):
    write_images(tmp_path / "imgs", n=3, size=(16, 16))
    full = train(_cfg(tmp_path, vae_dir, "full", 3, "--ckpt.every=0"))
    assert "latent Patch Diffusion: 3 images (3, 16, 16) encoded once" in capsys.readouterr().err
    train(_cfg(tmp_path, vae_dir, "part", 1, "--ckpt.every=1"))
    resumed = train(_cfg(tmp_path, vae_dir, "part", 3, "--ckpt.every=1"))
    assert resumed.resumed_from == 1
    assert [r["loss"] for r in full.history][1:] == [r["loss"] for r in resumed.history]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any("vae" in k for k in a)  # the frozen VAE is not part of the trained model
    model, cfg, _ = load_run(tmp_path / "full")
    imgs = generate(model, 2, SampleConfig(steps=2), cfg.edm, cfg.model_shape[1], seed=0)
    assert imgs.shape == (2, 3, 16, 16)  # decoded to pixels
    from diffusers import DiffusionPipeline

    from .test_real_data import _export

    out = _export(tmp_path / "full", tmp_path / "exp")
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    got = pipe(num_images=2, seed=0, num_inference_steps=2, output_type="pt").images
    assert got.shape == (2, 3, 16, 16) and torch.equal(got, (imgs.clamp(-1, 1) + 1) / 2)


def test_bad_vae_folder_and_resolution_messages(tmp_path, vae_dir):
    with pytest.raises((ConfigError, VAEError), match="no config.json there; pass a folder written by AutoencoderKL"):
        load_config(DiffusionConfig, None, [f"--model.vae={tmp_path}"])
    with pytest.raises(ConfigError, match=r"in pixels: --data.resolution=16"):
        load_config(DiffusionConfig, None, [*TINY8, "--data.resolution=12", f"--model.vae={vae_dir}"])
    load_config(DiffusionConfig, None, [*TINY8, "--data.resolution=16", f"--model.vae={vae_dir}"])
