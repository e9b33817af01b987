"""A diffusers pipeline around our sampler, so an exported folder opens with the diffusers pipeline API.

``genai-train diffusion export`` writes ``model_index.json`` naming this class (and a two-line
``pipeline.py`` that imports it from the installed genai-train), so either of these works offline::

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("exported/", trust_remote_code=True)

    from diffusion.pipeline import PatchDiffusionPipeline
    pipe = PatchDiffusionPipeline.from_pretrained("exported/", trust_remote_code=True)

    images = pipe(num_images=16, seed=0).images            # PIL images, the same as `diffusion sample --seed 0`
    cats = pipe(num_images=4, class_labels="cat", guidance_scale=2.0, output_type="pt").images

(diffusers asks for ``trust_remote_code=True`` for any folder that carries a ``pipeline.py``; the file only
imports this module.) The sampling itself is :func:`diffusion.sample.generate`, so one seed gives the same
images as ``genai-train diffusion sample`` bit for bit.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from diffusion.edm import EDMConfig
from diffusion.model import PatchEDM
from diffusion.sample import SampleConfig, generate


def own_storage(module: torch.nn.Module) -> torch.nn.Module:
    """Give every tensor its own aligned storage: diffusers 0.42 loads weights into unaligned memory, which
    rounds differently in some kernels, and bit-identical sampling needs the same numbers as a fresh model."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            t.data = t.data.clone(memory_format=torch.contiguous_format)
    return module


class PatchDiffusionPipeline(DiffusionPipeline):
    """Patch Diffusion (EDM) sampling from a UNet2DModel with 2 coordinate channels and an EDM scheduler.

    ``vae``: latent Patch Diffusion's AutoencoderKL (the UNet denoises its latents; samples are decoded).
    ``class_names``: the classes of a class-conditional UNet (its last class embedding is the null class).
    ``sampler`` / ``steps``: the defaults the model was trained to be sampled with.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        unet,
        scheduler,
        vae=None,
        class_names: list[str] | None = None,
        sampler: str = "heun",
        steps: int = 18,
    ):
        super().__init__()
        own_storage(unet)
        if vae is not None:
            own_storage(vae).eval().requires_grad_(False)
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(class_names=list(class_names or []), sampler=sampler, steps=steps)

    @property
    def edm(self) -> EDMConfig:
        c = self.scheduler.config
        return EDMConfig(sigma_data=c.sigma_data, sigma_min=c.sigma_min, sigma_max=c.sigma_max, rho=c.rho)

    @property
    def denoiser(self) -> PatchEDM:
        """D(x; sigma, pos, class) around the pipeline's UNet (decoding latents with the VAE when there is one)."""
        model = PatchEDM(self.unet, self.edm.sigma_data, self.config.class_names).eval()
        if getattr(self, "vae", None) is not None:
            from diffusion.latent import LatentDecoder

            model.latent_decoder = LatentDecoder(self.vae)
        return model

    @torch.no_grad()
    def __call__(
        self,
        num_images: int = 1,
        seed: int = 0,
        class_labels: list | str | int | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int | None = None,
        sampler: str | None = None,
        size: int = 0,
        batch_size: int = 64,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Generate ``num_images`` images from ``seed`` (the initial noise is drawn on the CPU).

        class_labels: a class name or index for all images, one per image, or None (the classes in turn).
        guidance_scale: classifier-free guidance w (1 = the plain conditional prediction).
        output_type: "pil", "np" ([n, H, W, C] in [0, 1]) or "pt" ([n, C, H, W] in [0, 1]).
        """
        cfg = SampleConfig(
            sampler=sampler or self.config.sampler,
            steps=num_inference_steps or self.config.steps,
            size=size,
            batch_size=batch_size,
            guidance=guidance_scale,
        )
        resolution = int(self.unet.config.sample_size)  # latent runs: the latent side
        x = generate(self.denoiser, num_images, cfg, self.edm, resolution, seed, self.device, class_labels)
        images = (x.clamp(-1, 1) + 1) / 2  # [n, C, S, S] in [0, 1]
        if output_type == "np" or output_type == "pil":
            images = images.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        elif output_type != "pt":
            raise ValueError(f"output_type must be pil, np or pt; got {output_type!r}")
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
