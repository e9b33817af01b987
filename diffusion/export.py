"""Export a trained denoiser as a diffusers pipeline folder, plus the EDM settings it needs.

Layout::

    out/model_index.json  the pipeline: DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    out/pipeline.py       imports diffusion.pipeline.PatchDiffusionPipeline from the installed genai-train
    out/unet/             config.json + safetensors: UNet2DModel.from_pretrained(out, subfolder="unet")
    out/scheduler/        EDMEulerScheduler.from_pretrained(out, subfolder="scheduler")
    out/vae/              latent runs only: the AutoencoderKL (AutoencoderKL.from_pretrained(out, subfolder="vae"))
    out/edm.json          sigma_data, sampling defaults, coordinate convention, class names

The UNet takes C + 2 channels: cat(c_in x, pos), pos = (x, y) pixel coordinates over the training canvas,
(idx / (R - 1) - 0.5) * 2; its output is F in D = c_skip x + c_out F (diffusers' prediction_type "epsilon").
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusion.edm import EDMConfig
from diffusion.model import PatchEDM
from diffusion.sample import SampleConfig

EDM_JSON = "edm.json"
FORMAT = "genai-train/patch-edm/1"


PIPELINE_PY = '''"""diffusers loads this file; it takes the pipeline from the installed genai-train."""

from diffusion.pipeline import PatchDiffusionPipeline  # noqa: F401
'''


def export_model(
    model: PatchEDM, edm: EDMConfig, resolution: int, out_dir: str | Path, sample: SampleConfig | None = None
) -> Path:
    """Write ``out_dir`` (see the module docstring). Returns the folder."""
    from diffusers import EDMEulerScheduler

    from diffusion.pipeline import PatchDiffusionPipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sample = sample or SampleConfig()
    scheduler = EDMEulerScheduler(
        sigma_min=edm.sigma_min,
        sigma_max=edm.sigma_max,
        sigma_data=edm.sigma_data,
        rho=edm.rho,
        prediction_type="epsilon",
    )
    decoder = getattr(model, "latent_decoder", None)
    vae = decoder.vae if decoder is not None else None
    pipe = PatchDiffusionPipeline(model.unet, scheduler, vae, model.classes, sample.sampler, sample.steps)
    pipe.save_pretrained(out)
    index = json.loads((out / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "PatchDiffusionPipeline"]  # out/pipeline.py: no diffusers lookup by name
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "pipeline.py").write_text(PIPELINE_PY)
    meta = {
        "format": FORMAT,
        "resolution": resolution,  # the side the UNet samples (latent runs: the latent side)
        "channels": model.img_channels,
        "latent": vae is not None,
        "classes": model.classes,
        "null_class": model.null_class if model.classes else None,
        "sigma_data": edm.sigma_data,
        "sigma_min": edm.sigma_min,
        "sigma_max": edm.sigma_max,
        "rho": edm.rho,
        "p_mean": edm.p_mean,
        "p_std": edm.p_std,
        "sampler": sample.sampler,
        "steps": sample.steps,
        "coordinates": "2 extra input channels after c_in*x: (x, y) = (idx / (resolution - 1) - 0.5) * 2",
        "timestep": "c_noise = ln(sigma) / 4",
        "output": "F: D(x) = c_skip x + c_out F (diffusers prediction_type 'epsilon')",
        "guidance": "D = D(null class) + w (D(class) - D(null class)); w = 1 is the conditional prediction",
    }
    (out / EDM_JSON).write_text(json.dumps(meta, indent=2))
    return out


def load_exported(folder: str | Path) -> tuple[PatchEDM, EDMConfig, int]:
    """(model, EDM settings, training resolution) from a folder written by :func:`export_model`."""
    from diffusers import UNet2DModel

    from diffusion.pipeline import own_storage

    folder = Path(folder)
    meta_path = folder / EDM_JSON
    if not meta_path.exists() or not (folder / "unet").is_dir():
        raise FileNotFoundError(
            f"{folder}: not an exported Patch Diffusion folder (needs unet/ and {EDM_JSON}); "
            f"create one with `genai-train diffusion export --ckpt RUN --out {folder}`"
        )
    meta = json.loads(meta_path.read_text())
    unet = own_storage(UNet2DModel.from_pretrained(folder, subfolder="unet"))
    edm = EDMConfig(
        sigma_data=meta["sigma_data"],
        p_mean=meta["p_mean"],
        p_std=meta["p_std"],
        sigma_min=meta["sigma_min"],
        sigma_max=meta["sigma_max"],
        rho=meta["rho"],
    )
    model = PatchEDM(unet, edm.sigma_data, meta.get("classes", [])).eval()
    if meta.get("latent"):
        from diffusion.latent import LatentDecoder, load_vae

        model.latent_decoder = LatentDecoder(load_vae(folder / "vae"))
    return model, edm, int(meta["resolution"])


def load_any(path: str | Path, use_ema: bool = True) -> tuple[PatchEDM, EDMConfig, int]:
    """A run folder (newest checkpoint) or an exported folder -> (model, EDM settings, resolution)."""
    path = Path(path)
    if (path / EDM_JSON).exists():
        return load_exported(path)
    from diffusion.train import load_run

    model, cfg, _ = load_run(path, use_ema=use_ema)
    return model, cfg.edm, cfg.model_shape[1]
