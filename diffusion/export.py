"""Export a trained denoiser as a folder stock diffusers opens, plus the EDM settings it needs.

Layout::

    out/unet/        config.json + safetensors: UNet2DModel.from_pretrained(out, subfolder="unet")
    out/scheduler/   EDMEulerScheduler.from_pretrained(out, subfolder="scheduler")
    out/edm.json     sigma_data, sampling defaults, coordinate convention

The UNet takes C + 2 channels: cat(c_in x, pos), pos = (x, y) pixel coordinates over the training canvas,
(idx / (R - 1) - 0.5) * 2; its output is F in D = c_skip x + c_out F (diffusers' prediction_type "epsilon").
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffusion.edm import EDMConfig
from diffusion.model import PatchEDM
from diffusion.sample import SampleConfig

EDM_JSON = "edm.json"
FORMAT = "genai-train/patch-edm/1"


def export_model(
    model: PatchEDM, edm: EDMConfig, resolution: int, out_dir: str | Path, sample: SampleConfig | None = None
) -> Path:
    """Write ``out_dir`` (see the module docstring). Returns the folder."""
    from diffusers import EDMEulerScheduler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.unet.save_pretrained(out / "unet")
    EDMEulerScheduler(
        sigma_min=edm.sigma_min,
        sigma_max=edm.sigma_max,
        sigma_data=edm.sigma_data,
        rho=edm.rho,
        prediction_type="epsilon",
    ).save_pretrained(out / "scheduler")
    sample = sample or SampleConfig()
    meta = {
        "format": FORMAT,
        "resolution": resolution,
        "channels": model.img_channels,
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
    }
    (out / EDM_JSON).write_text(json.dumps(meta, indent=2))
    return out


def load_exported(folder: str | Path) -> tuple[PatchEDM, EDMConfig, int]:
    """(model, EDM settings, training resolution) from a folder written by :func:`export_model`."""
    from diffusers import UNet2DModel

    folder = Path(folder)
    meta_path = folder / EDM_JSON
    if not meta_path.exists() or not (folder / "unet").is_dir():
        raise FileNotFoundError(
            f"{folder}: not an exported Patch Diffusion folder (needs unet/ and {EDM_JSON}); "
            f"create one with `genai-train diffusion export --ckpt RUN --out {folder}`"
        )
    meta = json.loads(meta_path.read_text())
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet")
    with torch.no_grad():  # own, aligned storage: diffusers 0.42 loads into unaligned memory, which rounds differently
        for t in list(unet.parameters()) + list(unet.buffers()):
            t.data = t.data.clone(memory_format=torch.contiguous_format)
    edm = EDMConfig(
        sigma_data=meta["sigma_data"],
        p_mean=meta["p_mean"],
        p_std=meta["p_std"],
        sigma_min=meta["sigma_min"],
        sigma_max=meta["sigma_max"],
        rho=meta["rho"],
    )
    return PatchEDM(unet, edm.sigma_data).eval(), edm, int(meta["resolution"])


def load_any(path: str | Path, use_ema: bool = True) -> tuple[PatchEDM, EDMConfig, int]:
    """A run folder (newest checkpoint) or an exported folder -> (model, EDM settings, resolution)."""
    path = Path(path)
    if (path / EDM_JSON).exists():
        return load_exported(path)
    from diffusion.train import load_run

    model, cfg, _ = load_run(path, use_ema=use_ema)
    return model, cfg.edm, cfg.data.resolution
