"""Samplers at full resolution with the full coordinate grid.

Our own EDM sampler (Karras et al. 2022, https://arxiv.org/abs/2206.00364, Algorithm 2: Heun, 2nd order
except on the last step, optional churn) and, as options, diffusers' EDMEulerScheduler and
EDMDPMSolverMultistepScheduler driven by the same denoiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from diffusion.edm import EDMConfig, c_out, c_skip

Denoiser = Callable[[Tensor, Tensor], Tensor]  # D(x [B,C,H,W], sigma [B]) -> [B,C,H,W]
SAMPLERS = ("heun", "euler", "diffusers_euler", "diffusers_dpmsolver")


@dataclass
class SampleConfig:
    """How images are generated."""

    sampler: Literal["heun", "euler", "diffusers_euler", "diffusers_dpmsolver"] = field(
        default="heun",
        metadata={"help": "heun/euler: our EDM sampler; diffusers_*: diffusers EDM schedulers"},
    )
    steps: int = field(default=18, metadata={"help": "number of noise levels (Heun: 2*steps-1 evaluations)"})
    s_churn: float = field(default=0.0, metadata={"help": "EDM stochasticity S_churn (0 = deterministic ODE)"})
    s_min: float = field(default=0.0, metadata={"help": "churn only for sigma >= s_min"})
    s_max: float = field(default=float("inf"), metadata={"help": "churn only for sigma <= s_max"})
    s_noise: float = field(default=1.0, metadata={"help": "noise inflation S_noise for churn"})
    size: int = field(
        default=0, metadata={"help": "canvas side in pixels; 0 = training resolution; larger extrapolates"}
    )
    x_start: int = field(default=0, metadata={"help": "column offset of the canvas in training pixels"})
    y_start: int = field(default=0, metadata={"help": "row offset of the canvas in training pixels"})
    batch_size: int = field(default=64, metadata={"help": "images generated per network call"})
    guidance: float = field(
        default=1.0,
        metadata={"help": "class-conditional models: guidance weight w, D = D_uncond + w (D_cond - D_uncond); 1 = off"},
    )

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sample.sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
        if self.steps < 1:
            raise ValueError(f"sample.steps must be >= 1, got {self.steps}")
        if self.size < 0 or self.batch_size < 1:
            raise ValueError("sample.size must be >= 0 and sample.batch_size >= 1")


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """EDM eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho for i < N, sigma_N = 0.

    Returns [N+1] float64.
    """
    i = torch.arange(steps, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    t = (a + i / max(steps - 1, 1) * (b - a)) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def edm_sampler(
    denoise: Denoiser,
    noise: Tensor,
    sigmas: Tensor,
    second_order: bool = True,
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """EDM Algorithm 2. noise ~ N(0, I) [B,C,H,W]; sigmas [N+1] ending in 0. Returns x_0."""
    n = len(sigmas) - 1
    x = noise * sigmas[0].item()
    ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(n):
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        # Churn: raise the noise level to t_hat (Alg. 2, lines 4-6).
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_min <= t_cur <= s_max else 0.0
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            x = x + math.sqrt(t_hat**2 - t_cur**2) * s_noise * eps
        # Euler step (lines 7-8).
        d = (x - denoise(x, ones * t_hat)) / t_hat
        x_next = x + (t_next - t_hat) * d
        # Second-order correction, except on the last step to sigma = 0 (lines 9-11).
        if second_order and t_next > 0:
            d_next = (x_next - denoise(x_next, ones * t_next)) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return x


def diffusers_sampler(denoise: Denoiser, noise: Tensor, kind: str, steps: int, edm: EDMConfig) -> Tensor:
    """Drive diffusers' EDM schedulers with our denoiser D (float32, as the schedulers step in float32).

    Both schedulers precondition the model output themselves with prediction_type "epsilon", which is
    EDM's F-parameterisation (D = c_skip x + c_out F), so D is mapped back to F = (D - c_skip x) / c_out.
    """
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    common = dict(
        sigma_min=edm.sigma_min,
        sigma_max=edm.sigma_max,
        sigma_data=edm.sigma_data,
        rho=edm.rho,
        prediction_type="epsilon",
    )
    if kind == "diffusers_euler":
        sched = EDMEulerScheduler(**common)
    elif kind == "diffusers_dpmsolver":
        sched = EDMDPMSolverMultistepScheduler(**common)
    else:
        raise ValueError(f"unknown diffusers sampler {kind!r}; choose diffusers_euler or diffusers_dpmsolver")
    sched.set_timesteps(steps, device=noise.device)
    # Start from N(0, sigma_max^2) as EDM does (diffusers' init_noise_sigma adds 1 to the variance).
    x = noise.float() * sched.sigmas[0].item()
    ones = torch.ones(x.shape[0], device=x.device)
    for k, t in enumerate(sched.timesteps):
        sigma = float(sched.sigmas[k])
        sched.scale_model_input(x, t)  # keeps the scheduler's bookkeeping; D applies c_in itself
        d = denoise(x, ones * sigma).float()
        s = torch.tensor(sigma)
        f = (d - c_skip(s, edm.sigma_data) * x) / c_out(s, edm.sigma_data)
        x = sched.step(f, t, x).prev_sample
    return x


def run_sampler(
    denoise: Denoiser,
    noise: Tensor,
    cfg: SampleConfig,
    edm: EDMConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dispatch on cfg.sampler. noise ~ N(0, I) at the full canvas size."""
    if cfg.sampler in ("heun", "euler"):
        sigmas = karras_sigmas(cfg.steps, edm.sigma_min, edm.sigma_max, edm.rho)
        return edm_sampler(
            denoise,
            noise,
            sigmas,
            second_order=cfg.sampler == "heun",
            s_churn=cfg.s_churn,
            s_min=cfg.s_min,
            s_max=cfg.s_max,
            s_noise=cfg.s_noise,
            generator=generator,
        )
    return diffusers_sampler(denoise, noise, cfg.sampler, cfg.steps, edm)


def evaluations(cfg: SampleConfig) -> int:
    """Network calls per image batch: Heun 2N - 1 (no correction on the last step), the others N."""
    return 2 * cfg.steps - 1 if cfg.sampler == "heun" else cfg.steps


def guided_denoiser(model, grid: Tensor, labels: Tensor | None, guidance: float = 1.0) -> Denoiser:
    """D(x, sigma) of a PatchEDM-like model on the coordinate grid [B, 2, S, S].

    Unconditional (labels None): D(x). Class-conditional with labels [B]: classifier-free guidance (Ho &
    Salimans 2022, https://arxiv.org/abs/2207.12598, eq. 6 in D form) D = D_u + w (D_c - D_u), with D_u the
    null class's prediction; w = 1 is exactly the conditional prediction (D_u is not computed).
    """
    if labels is None:
        return lambda x, sigma: model(x, sigma, grid)
    if guidance == 1.0:
        return lambda x, sigma: model(x, sigma, grid, labels)
    null = torch.full_like(labels, model.null_class)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        both = model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([grid, grid]), torch.cat([labels, null]))
        d_cond, d_uncond = both.chunk(2)  # [B, C, S, S] each
        return d_uncond + guidance * (d_cond - d_uncond)

    return denoise


def class_indices(model, n: int, class_labels: Tensor | list | str | int | None = None) -> Tensor | None:
    """[n] class indices for a class-conditional model (None for an unconditional one).

    ``class_labels``: one class (name or index) for every image, one per image, or None: the classes in turn.
    """
    classes = list(getattr(model, "classes", []) or [])
    if not classes:
        if class_labels is not None and class_labels != []:
            raise ValueError("this model is unconditional (trained with data.labels=none); drop --class")
        return None

    def index(c) -> int:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in classes:
                raise ValueError(f"unknown class {c!r}; this model knows {', '.join(classes)}")
            return classes.index(c)
        k = int(c)
        if not 0 <= k < len(classes):
            raise ValueError(
                f"class index {k} out of range; this model has {len(classes)} classes ({', '.join(classes)})"
            )
        return k

    if class_labels is None:
        return torch.arange(n) % len(classes)
    if isinstance(class_labels, (str, int)):
        return torch.full((n,), index(class_labels), dtype=torch.int64)
    if isinstance(class_labels, Tensor):
        class_labels = class_labels.tolist()
    if len(class_labels) != n:
        raise ValueError(f"{len(class_labels)} class labels for {n} images; give one, or one per image")
    return torch.tensor([index(c) for c in class_labels], dtype=torch.int64)


@torch.no_grad()
def generate(
    model,
    n: int,
    cfg: SampleConfig,
    edm: EDMConfig,
    resolution: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    class_labels: Tensor | list | str | int | None = None,
    progress: bool = False,
) -> Tensor:
    """n images [n, C, S, S] in [-1, 1] (unclamped) from a PatchEDM-like model D(x, sigma, pos[, labels]).

    The canvas S is cfg.size (0 = the training resolution R). Its coordinate grid is the training grid
    extended: (idx + start) / (R - 1) * 2 - 1, so S > R or a start offset reaches past [-1, 1]
    (Patch Diffusion's extrapolation). The initial noise is drawn on the CPU from ``seed``, in one piece,
    so the images do not depend on the device or on cfg.batch_size. A class-conditional model samples
    ``class_labels`` (see :func:`class_indices`; None: the classes in turn) with guidance ``cfg.guidance``.
    ``progress``: a tqdm bar over the network calls. A latent model (``model.latent_decoder``) is sampled
    on its latent grid (``resolution`` is the latent side) and decoded to pixels.
    """
    from diffusion.patches import coord_grid

    device = torch.device(device)
    size = cfg.size or resolution
    channels = model.img_channels
    labels = class_indices(model, n, class_labels)  # [n] or None
    if labels is None and cfg.guidance != 1.0:
        raise ValueError(f"guidance {cfg.guidance} needs a class-conditional model (train with data.labels=folders)")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, channels, size, size, generator=g)  # [n, C, S, S]
    pos = coord_grid(size, size, resolution, cfg.x_start, cfg.y_start, device=device)  # [2, S, S]
    was_training = model.training
    model.eval()
    out = []
    chunks = noise.split(cfg.batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chunks) * evaluations(cfg), desc=f"sampling {n} images", unit="call", leave=False)
    for k, chunk in enumerate(chunks):
        chunk = chunk.to(device)
        grid = pos.expand(chunk.shape[0], 2, size, size)
        lab = None if labels is None else labels[k * cfg.batch_size : k * cfg.batch_size + len(chunk)].to(device)
        denoise = guided_denoiser(model, grid, lab, cfg.guidance)
        if bar is not None:
            denoise = _counted(denoise, bar)
        out.append(run_sampler(denoise, chunk, cfg, edm, generator=g).cpu())
    if bar is not None:
        bar.close()
    model.train(was_training)
    out = torch.cat(out)
    decoder = getattr(model, "latent_decoder", None)  # latent Patch Diffusion: latents -> pixels
    return decoder(out) if decoder is not None else out


def _counted(denoise: Denoiser, bar) -> Denoiser:
    def counted(x: Tensor, sigma: Tensor) -> Tensor:
        out = denoise(x, sigma)
        bar.update(1)
        return out

    return counted


def image_grid(images: Tensor, nrow: int | None = None) -> Tensor:
    """[n, C, H, W] in [-1, 1] -> one picture [C, rows*H, nrow*W] in [0, 1] (C = 1 becomes 3)."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    imgs = (images.float().clamp(-1, 1) + 1) / 2
    if c == 1:
        imgs = imgs.expand(n, 3, h, w)
    canvas = torch.ones(3, rows * h, nrow * w)
    for k in range(n):
        r, col = divmod(k, nrow)
        canvas[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = imgs[k]
    return canvas


def save_png(picture: Tensor, path: str) -> None:
    """[3, H, W] in [0, 1] -> PNG."""
    from pathlib import Path

    from PIL import Image

    arr = (picture.clamp(0, 1).permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
