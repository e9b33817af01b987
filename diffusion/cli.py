"""`genai-train diffusion <verb>` (train, sample, eval, export) and the diffusion part of the demo."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion.edm import EDMConfig
from diffusion.metrics import MetricsConfig
from diffusion.sample import SampleConfig
from diffusion.train import DiffusionConfig
from genai_train.commands import Command


@dataclass
class SampleCommandConfig:
    """`genai-train diffusion sample --ckpt RUN --n 64 --steps 18 --out grid.png [--class NAME --guidance W]`."""

    ckpt: str = field(default="", metadata={"help": "run folder (newest checkpoint) or exported folder"})
    n: int = field(default=64, metadata={"help": "images to generate"})
    class_name: str = field(
        default="",
        metadata={"help": "--class NAME: the class to sample (class-conditional models; '' = the classes in turn)"},
    )
    out: str = field(default="samples.png", metadata={"help": "PNG grid to write (a folder: one PNG per image)"})
    seed: int = field(default=0, metadata={"help": "seed of the initial noise"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    ema: bool = field(default=True, metadata={"help": "use the EMA weights of a run folder"})
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")


@dataclass
class EvalCommandConfig:
    """`genai-train diffusion eval --ckpt RUN --ref FOLDER --n N`."""

    ckpt: str = field(default="", metadata={"help": "run folder (newest checkpoint) or exported folder"})
    ref: str = field(default="", metadata={"help": "folder of real reference images"})
    n: int = field(default=1000, metadata={"help": "generated images (and at most this many reference images)"})
    seed: int = field(default=0, metadata={"help": "seed of the initial noise"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    floor: bool = field(default=True, metadata={"help": "also report real-vs-real (two halves of --ref)"})
    out: str = field(default="", metadata={"help": "write the figures to this JSON file too"})
    sample: SampleConfig = field(default_factory=SampleConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"--n must be >= 2, got {self.n}")


@dataclass
class ExportCommandConfig:
    """`genai-train diffusion export --ckpt RUN --out FOLDER`."""

    ckpt: str = field(default="", metadata={"help": "run folder to export (newest checkpoint)"})
    out: str = field(default="", metadata={"help": "folder to write (unet/, scheduler/, edm.json)"})
    ema: bool = field(default=True, metadata={"help": "export the EMA weights"})


@dataclass
class ShapesCommandConfig:
    """`genai-train diffusion shapes --out FOLDER`: procedural class folders to try class-conditional training."""

    out: str = field(default="data/shapes", metadata={"help": "folder to write (disc/ and square/ subfolders)"})
    n: int = field(default=96, metadata={"help": "images in all (half discs, half squares)"})
    size: int = field(default=16, metadata={"help": "image side in pixels"})
    seed: int = field(default=0, metadata={"help": "seed of the shapes' positions, sizes and colours"})

    def __post_init__(self) -> None:
        if self.n < 2 or self.size < 4:
            raise ValueError(f"--n must be >= 2 and --size >= 4, got {self.n} and {self.size}")


def run_shapes(cfg: ShapesCommandConfig) -> dict:
    out = demo_images(Path(cfg.out), n=cfg.n, size=cfg.size, seed=cfg.seed, classes=True)
    print(f"wrote {cfg.n} {cfg.size}px images to {out}/disc and {out}/square (train with --data.labels=folders)")
    return {"out": str(out)}


def run_train(cfg: DiffusionConfig) -> dict:
    from diffusion.train import train

    trainer = train(cfg)
    return {"run_dir": str(trainer.run_dir), "step": trainer.step}


def _device(name: str) -> torch.device:
    from genai_train.device import select_device

    return select_device(name)


def _require(**paths: str) -> None:
    """Path arguments have no sensible default: say which flag is missing."""
    missing = [k for k, v in paths.items() if not v]
    if missing:
        raise ValueError(
            "missing " + ", ".join(f"--{k}" for k in missing) + "; e.g. --ckpt RUN_DIR (a training "
            "run or an exported folder), --ref FOLDER_OF_REAL_IMAGES, --out PATH"
        )


def run_sample(cfg: SampleCommandConfig) -> dict:
    _require(ckpt=cfg.ckpt)
    from diffusion.export import load_any
    from diffusion.sample import generate, image_grid, save_png

    device = _device(cfg.device)
    model, edm, resolution = load_any(cfg.ckpt, use_ema=cfg.ema)
    imgs = generate(
        model.to(device),
        cfg.n,
        cfg.sample,
        edm,
        resolution,
        seed=cfg.seed,
        device=device,
        class_labels=cfg.class_name or None,
        progress=True,
    )
    out = Path(cfg.out)
    if out.suffix.lower() == ".png":
        save_png(image_grid(imgs), str(out))
    else:
        for k, img in enumerate(imgs):
            save_png(image_grid(img[None], nrow=1), str(out / f"{k:05d}.png"))
    what = ""
    if model.classes:
        names = [cfg.class_name] if cfg.class_name else model.classes
        what = f", class {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}, guidance {cfg.sample.guidance:g}"
    print(f"wrote {cfg.n} samples ({imgs.shape[-1]}px, {cfg.sample.sampler}, {cfg.sample.steps} steps{what}) to {out}")
    return {"out": str(out)}


def evaluate(
    model,
    edm: EDMConfig,
    resolution: int,
    real: torch.Tensor,
    n: int,
    sample: SampleConfig,
    metrics: MetricsConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
    floor: bool = True,
    net=None,
    progress: bool = False,
) -> dict:
    """FID/KID of n generated images against the reference real[:n] ([M, C, R, R] in [-1, 1]).

    With ``floor``, the held-out real images real[n:2n] against the same reference give the real-vs-real
    floor at the same N (with fewer than 2n images, the two halves of ``real`` at a smaller N).
    """
    from diffusion.metrics import features, fid_kid_from_features, load_feature_net
    from diffusion.sample import generate

    net = net or load_feature_net(metrics)
    bar = (lambda what: what) if progress else (lambda what: "")  # tqdm titles (progress bars) or none
    fake = generate(model.to(device), n, sample, edm, resolution, seed=seed, device=device, progress=progress)
    f_ref = features(net, real[:n], metrics.batch_size, bar("features: reference images"))
    f_fake = features(net, fake, metrics.batch_size, bar("features: generated images"))
    out = {"generated": fid_kid_from_features(f_ref, f_fake, metrics.kid_subset)}
    if floor:
        if real.shape[0] >= 2 * n:
            f_a, f_b = f_ref, features(net, real[n : 2 * n], metrics.batch_size, bar("features: held-out images"))
        else:
            half = real.shape[0] // 2
            f_a = features(net, real[:half], metrics.batch_size, bar("features: real, first half"))
            f_b = features(net, real[half : 2 * half], metrics.batch_size, bar("features: real, second half"))
        out["real_vs_real_floor"] = fid_kid_from_features(f_a, f_b, metrics.kid_subset)
    return out


def run_eval(cfg: EvalCommandConfig) -> dict:
    _require(ckpt=cfg.ckpt, ref=cfg.ref)
    from diffusion.data import DataConfig, load_image_folder
    from diffusion.export import load_any

    device = _device(cfg.device)
    model, edm, resolution = load_any(cfg.ckpt)
    decoder = getattr(model, "latent_decoder", None)  # latent runs: compare in pixels
    channels = decoder.vae.config.in_channels if decoder is not None else model.img_channels
    pixels = resolution * 2 ** (len(decoder.vae.config.block_out_channels) - 1) if decoder is not None else resolution
    real, _ = load_image_folder(DataConfig(root=cfg.ref, resolution=pixels, channels=channels))
    g = torch.Generator().manual_seed(cfg.seed)
    real = real[torch.randperm(real.shape[0], generator=g)]
    res = evaluate(
        model, edm, resolution, real, cfg.n, cfg.sample, cfg.metrics, cfg.seed, device, cfg.floor, progress=True
    )
    line = (
        f"FID {res['generated']['fid']:.2f}  KID {res['generated']['kid']:.4f} "
        f"(n={res['generated']['n_fake']} generated vs {res['generated']['n_real']} real)"
    )
    if "real_vs_real_floor" in res:
        f = res["real_vs_real_floor"]
        line += f"; real-vs-real floor FID {f['fid']:.2f} KID {f['kid']:.4f} (n={f['n_fake']} each)"
    print(line)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(res, indent=2))
    return res


def run_export(cfg: ExportCommandConfig) -> dict:
    _require(ckpt=cfg.ckpt, out=cfg.out)
    from diffusion.export import export_model
    from diffusion.train import load_run

    model, run_cfg, step = load_run(cfg.ckpt, use_ema=cfg.ema)
    out = export_model(model, run_cfg.edm, run_cfg.model_shape[1], cfg.out, run_cfg.sample)
    classes = f"; {len(model.classes)} classes: {', '.join(model.classes)}" if model.classes else ""
    print(
        f"exported step {step} of {cfg.ckpt} to {out}{classes}\n"
        f"  pipeline: DiffusionPipeline.from_pretrained('{out}', trust_remote_code=True)(num_images=4, seed=0)\n"
        f"  UNet alone: UNet2DModel.from_pretrained('{out}', subfolder='unet')"
    )
    return {"out": str(out)}


COMMANDS: dict[str, Command] = {
    "train": Command(
        help="train a Patch Diffusion model on a folder of images",
        run=run_train,
        config=DiffusionConfig,
        shortcuts={
            "data": "data.root",
            "out": "run.dir",
            "steps": "train.steps",
            "resolution": "data.resolution",
            "p": "patch.p",
            "device": "run.device",
            "seed": "run.seed",
            "labels": "data.labels",
        },
        example="genai-train diffusion train --data ./images --config configs/diffusion/emoji32_cpu.yaml",
    ),
    "sample": Command(
        help="generate images from a run or an exported folder (EDM Heun or diffusers EDM schedulers)",
        run=run_sample,
        config=SampleCommandConfig,
        shortcuts={
            "steps": "sample.steps",
            "sampler": "sample.sampler",
            "size": "sample.size",
            "class": "class_name",
            "guidance": "sample.guidance",
        },
        example="genai-train diffusion sample --ckpt runs/diffusion --n 64 --steps 18 --out grid.png",
    ),
    "eval": Command(
        help="FID and KID against a folder of real images (local Inception weights)",
        run=run_eval,
        config=EvalCommandConfig,
        shortcuts={"steps": "sample.steps", "inception": "metrics.inception"},
        example="genai-train diffusion eval --ckpt runs/diffusion --ref ./images --n 1000",
    ),
    "shapes": Command(
        help="write procedural 16 px discs and squares in two class folders (to try data.labels=folders)",
        run=run_shapes,
        config=ShapesCommandConfig,
        example="genai-train diffusion shapes --out data/shapes",
    ),
    "export": Command(
        help="write a diffusers pipeline folder: model_index.json + unet/ + scheduler/ + edm.json",
        run=run_export,
        config=ExportCommandConfig,
        example="genai-train diffusion export --ckpt runs/diffusion --out exported/",
    ),
}


def demo_images(folder: Path, n: int = 96, size: int = 16, seed: int = 0, classes: bool = False) -> Path:
    """Procedural training images: a coloured disc or square on a two-tone background (PNG files); with
    ``classes`` the discs go to ``folder/disc`` and the squares to ``folder/square``."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    palette = torch.tensor([[230, 60, 50], [40, 120, 220], [250, 200, 40], [60, 180, 90]], dtype=torch.float32)
    for k in range(n):
        cx, cy = (torch.rand(2, generator=g) * 0.5 + 0.25) * size
        rad = float(torch.rand((), generator=g) * 0.15 + 0.2) * size
        colour = palette[int(torch.randint(0, 4, (), generator=g))]
        bg_top, bg_bottom = torch.tensor([235.0, 235, 225]), torch.tensor([120.0, 110, 100])
        img = torch.where((yy < size / 2)[..., None], bg_top, bg_bottom)  # [S, S, 3]
        if k % 2:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < rad**2
        else:
            mask = ((xx - cx).abs() < rad) & ((yy - cy).abs() < rad)
        img = torch.where(mask[..., None], colour, img)
        where = folder / ("disc" if k % 2 else "square") if classes else folder
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.round().clamp(0, 255).to(torch.uint8).numpy()).save(where / f"shape_{k:03d}.png")
    return folder


def demo(out_dir: Path) -> dict[str, str]:
    """A few CPU minutes: procedural 16px shapes, a tiny patch model (p = 0.5), sample grids, metrics JSON."""
    # 16 px images make tensors so small that extra threads cost more than they give (and oversubscribe a
    # shared machine); the demo runs single-threaded and restores the setting afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _demo(Path(out_dir))
    finally:
        torch.set_num_threads(threads)


def _demo(out_dir: Path) -> dict[str, str]:
    from diffusion.sample import generate, image_grid, save_png
    from diffusion.train import train
    from genai_train.config import load_config

    out_dir = Path(out_dir)
    data = demo_images(out_dir / "data")
    cfg = load_config(
        DiffusionConfig,
        None,
        [
            f"--data.root={data}",
            "--data.resolution=16",
            "--data.batch_size=16",
            "--model.block_out_channels=[32,64]",
            "--model.attention=[false,true]",
            "--model.norm_num_groups=8",
            "--model.attention_head_dim=16",
            "--train.steps=1000",
            "--optim.lr=2e-3",
            "--schedule.warmup_steps=50",
            "--ema.half_life_steps=50",
            "--preview.every=250",
            "--preview.n=16",
            "--preview.steps=12",
            "--ckpt.every=250",
            "--run.log_every=50",
            f"--run.dir={out_dir / 'run'}",
            "--run.device=cpu",
        ],
    )
    t0 = time.perf_counter()
    trainer = train(cfg)
    minutes = (time.perf_counter() - t0) / 60
    model = trainer.ema.module if trainer.ema is not None else trainer.model
    grid = out_dir / "diffusion_samples.png"
    save_png(image_grid(generate(model, 36, SampleConfig(steps=18), cfg.edm, 16, seed=0)), str(grid))
    big = out_dir / "diffusion_extrapolated_32px.png"
    save_png(image_grid(generate(model, 4, SampleConfig(steps=18, size=32), cfg.edm, 16, seed=0), nrow=2), str(big))
    real = out_dir / "diffusion_training_images.png"
    from diffusion.data import DataConfig, load_image_folder

    imgs, _ = load_image_folder(DataConfig(root=str(data), resolution=16), log=lambda *_: None)
    save_png(image_grid(imgs[:36]), str(real))
    metrics = {
        "steps": trainer.step,
        "train_minutes": round(minutes, 2),
        "final_loss": trainer.history[-1]["loss"] if trainer.history else None,
        "patch_p": cfg.patch.p,
        "resolution": 16,
    }
    (out_dir / "diffusion_metrics.json").write_text(json.dumps(metrics, indent=2))
    return {
        "sample grid": str(grid),
        "extrapolated 32px canvas": str(big),
        "training images": str(real),
        "metrics": str(out_dir / "diffusion_metrics.json"),
        "run": str(out_dir / "run"),
    }
