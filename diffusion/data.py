"""Image folder -> one cached tensor [N, C, R, R] in [-1, 1], and the per-step patch batches drawn from it.

Reads a folder recursively (PNG, JPEG, WebP, BMP, GIF first frame, TIFF), in any of the modes real folders
hold: grayscale, palette, grey+alpha and RGBA (composited onto ``data.background``), 16-bit grayscale.
Each image is resized (shorter side to R, bicubic) and centre-cropped once, then kept in memory (and
optionally on disk, ``data.cache_dir``), so training never decodes a file twice. Unreadable files are
skipped, counted and listed; the run stops only when nothing is readable.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from diffusion.patches import PatchConfig, batch_multiplier, draw_patch_size, random_crops
from genai_train.data import ShardedBatchSampler
from genai_train.run import path_field

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class DataConfig:
    """Where the training images come from and how they are prepared."""

    root: str = path_field("", "folder of images (searched recursively)")
    resolution: int = field(
        default=64, metadata={"help": "training side R in pixels (images are resized + centre-cropped)"}
    )
    channels: int = field(default=3, metadata={"help": "3 = RGB, 1 = grayscale (the UNet takes channels + 2 inputs)"})
    background: tuple[int, int, int] = field(
        default=(255, 255, 255), metadata={"help": "RGB colour transparent pixels are composited onto"}
    )
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    batch_size: int = field(default=64, metadata={"help": "images per step at full size (per process)"})
    cache_dir: str = path_field("", "also keep the decoded tensor here ('' = memory only)")

    def __post_init__(self) -> None:
        if self.resolution < 4:
            raise ValueError(f"data.resolution must be >= 4 pixels, got {self.resolution}")
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 3 (RGB) or 1 (grayscale), got {self.channels}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"data.background must be three values in 0..255, got {self.background}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")


class ImageFolderError(ValueError):
    """The folder cannot give a single training image; the message says why and what to pass instead."""


@dataclass
class LoadReport:
    """What happened while reading a folder."""

    files: int = 0  # image-suffixed files found
    other_files: int = 0  # files without an image suffix (ignored)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images
    upscaled: list[str] = field(default_factory=list)  # images smaller than R, upscaled
    transparent: int = 0  # images with an alpha channel, composited onto the background
    high_bit: int = 0  # 16-bit images

    def summary(self, n: int, background: tuple[int, int, int]) -> list[str]:
        lines = [f"read {n} images ({self.files} image files, {self.other_files} other files ignored)"]
        if self.transparent:
            lines.append(
                f"{self.transparent} images have an alpha channel: composited onto background "
                f"RGB{tuple(background)} (set data.background to change it)"
            )
        if self.high_bit:
            lines.append(f"{self.high_bit} images are 16-bit: kept at full precision")
        return lines


def list_files(root: Path) -> tuple[list[Path], int]:
    """Image-suffixed files under root (recursive, sorted) and the number of other files."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, len(files) - len(images)


def _to_float_array(img, background: tuple[int, int, int], channels: int, report: LoadReport) -> np.ndarray:
    """A PIL image (first frame) -> float32 [H, W, C] in [0, 1], alpha composited onto ``background``."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit (or 32-bit int) grayscale
        report.high_bit += 1
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / top, 0.0, 1.0).astype(np.float32)[..., None]
        return grey if channels == 1 else np.repeat(grey, 3, axis=-1)
    if mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)[..., None]
        return grey if channels == 1 else np.repeat(grey, 3, axis=-1)
    has_alpha = (
        mode in ("RGBA", "LA", "PA")
        or (mode == "P" and "transparency" in img.info)
        or (mode in ("RGB", "L") and "transparency" in img.info)
    )
    if has_alpha:
        report.transparent += 1
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0  # [H, W, 4]
        alpha = rgba[..., 3:]
        bg = np.asarray(background, dtype=np.float32) / 255.0
        rgb = rgba[..., :3] * alpha + bg * (1.0 - alpha)
    else:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if channels == 1:  # ITU-R 601 luma, as PIL's "L"
        return (rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return rgb


def _png_16bit_colour(path: Path) -> bool:
    """True for a 16-bit RGB or RGBA PNG, which Pillow would reduce to 8 bits."""
    if path.suffix.lower() != ".png":
        return False
    with open(path, "rb") as f:
        head = f.read(26)  # signature (8) + IHDR length/type (8) + width, height (8) + depth, colour type
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _read_png_16bit(path: Path, background: tuple[int, int, int], channels: int, report: LoadReport) -> np.ndarray:
    """16-bit RGB(A) PNG at full precision via pypng -> float32 [H, W, C] in [0, 1]."""
    import png  # pypng: pure Python, reads 16-bit colour PNGs

    w, h, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.float32) for r in rows]).reshape(h, w, planes) / 65535.0
    report.high_bit += 1
    if planes == 4:
        report.transparent += 1
        alpha = arr[..., 3:]
        arr = arr[..., :3] * alpha + np.asarray(background, np.float32) / 255.0 * (1.0 - alpha)
    if channels == 1:
        return (arr @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return arr


def _resize_center_crop(arr: np.ndarray, resolution: int) -> np.ndarray:
    """[H, W, C] -> [R, R, C]: shorter side to R (bicubic, antialiased), then the centre square."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]  # [1, C, H, W]
    h, w = t.shape[-2:]
    s = resolution / min(h, w)
    nh, nw = max(resolution, round(h * s)), max(resolution, round(w * s))
    if (nh, nw) != (h, w):
        t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bicubic", antialias=s < 1, align_corners=False)
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    return t[0, :, top : top + resolution, left : left + resolution].clamp(0, 1).numpy()  # [C, R, R]


def decode_image(path: Path, cfg: DataConfig, report: LoadReport) -> np.ndarray:
    """One file -> float32 [C, R, R] in [0, 1]. Raises on unreadable or truncated files."""
    from PIL import Image

    if _png_16bit_colour(path):
        try:
            arr = _read_png_16bit(path, cfg.background, cfg.channels, report)
        except ImportError:
            arr = None
            warnings.warn(
                f"{path} is a 16-bit colour PNG; Pillow reads it at 8 bits. `pip install pypng` to keep full precision",
                stacklevel=3,
            )
        if arr is not None:
            return _finish(arr, path, cfg, report)
    with Image.open(path) as img:
        img.seek(0)  # GIF / animated WebP: the first frame
        img.load()  # forces a full decode: truncated files raise here
        arr = _to_float_array(img, cfg.background, cfg.channels, report)
    return _finish(arr, path, cfg, report)


def _finish(arr: np.ndarray, path: Path, cfg: DataConfig, report: LoadReport) -> np.ndarray:
    h, w = arr.shape[:2]
    if min(h, w) < cfg.resolution:
        report.upscaled.append(f"{path} ({w}x{h})")
    return _resize_center_crop(arr, cfg.resolution)


def _cache_key(files: list[Path], cfg: DataConfig) -> str:
    h = hashlib.sha256()
    h.update(repr((cfg.resolution, cfg.channels, tuple(cfg.background))).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def load_image_folder(cfg: DataConfig, log=print) -> tuple[Tensor, LoadReport]:
    """Decode every image under ``cfg.root`` once. Returns ([N, C, R, R] float32 in [-1, 1], report)."""
    if not cfg.root:
        raise ImageFolderError(
            "no training images given; pass --data FOLDER (a folder of PNG/JPEG/WebP/BMP/GIF images)"
        )
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise ImageFolderError(f"{root}: no such folder; pass --data to a folder of PNG/JPEG/WebP/BMP/GIF images")
    if not root.is_dir():
        raise ImageFolderError(f"{root}: is a file, not a folder; pass --data to the folder that holds the images")
    files, other = list_files(root)
    report = LoadReport(files=len(files), other_files=other)
    if not files and not other:
        raise ImageFolderError(
            f"{root}: the folder is empty (no files, searched recursively); "
            "pass --data to a folder of PNG/JPEG/WebP/BMP/GIF images"
        )
    if not files:
        raise ImageFolderError(
            f"{root}: not an image folder (0 images among {other} files; none ends in "
            f"{'/'.join(IMAGE_SUFFIXES)}); pass --data to a folder of PNG/JPEG/WebP/BMP/GIF images"
        )
    cache_path = None
    if cfg.cache_dir:
        cache_path = Path(cfg.cache_dir) / f"images_{_cache_key(files, cfg)}.pt"
        if cache_path.exists():
            cached = torch.load(cache_path, weights_only=True)
            log(f"loaded {cached['images'].shape[0]} decoded images from cache {cache_path}")
            return cached["images"], report
    arrays = []
    for p in files:
        try:
            arrays.append(decode_image(p, cfg, report))
        except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            report.skipped.append((str(p), f"{type(e).__name__}: {e}"))
    if report.skipped:
        listed = "\n  ".join(f"{p}: {why}" for p, why in report.skipped[:20])
        more = f"\n  ... and {len(report.skipped) - 20} more" if len(report.skipped) > 20 else ""
        msg = (
            f"{root}: skipped {len(report.skipped)} of {len(files)} image files that cannot be read "
            f"(corrupt or truncated):\n  {listed}{more}"
        )
        if not arrays:
            raise ImageFolderError(msg + "\nno readable image is left; pass --data to a folder of valid images")
        warnings.warn(msg, stacklevel=2)
    if report.upscaled:
        ex = ", ".join(report.upscaled[:5]) + (" ..." if len(report.upscaled) > 5 else "")
        warnings.warn(
            f"{len(report.upscaled)} images are smaller than data.resolution={cfg.resolution} and "
            f"were upscaled (blurry training data); e.g. {ex}. Lower data.resolution to avoid it",
            stacklevel=2,
        )
    images = torch.from_numpy(np.stack(arrays)) * 2 - 1  # [N, C, R, R] in [-1, 1]
    for line in report.summary(len(arrays), cfg.background):
        log(line)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        torch.save({"images": images}, tmp)
        tmp.replace(cache_path)
    return images, report


class PatchBatch(NamedTuple):
    """One micro-batch: patches [B, C, P, P], coordinates [B, 2, P, P], and where its rows sit in the step's
    global batch of ``n_global`` (all ranks): ``take`` [B]."""

    patches: Tensor
    pos: Tensor
    take: Tensor
    n_global: int


class PatchBatches:
    """The engine's batch source: each call draws one patch size, then `mul` base batches of random crops.

    Returns a :class:`PatchBatch`. Every random stream (patch size, flips, crops, and the noise levels and
    noise the loss draws) is seeded identically on every rank and drawn for the step's whole global batch;
    each rank keeps the rows of its own images (``PatchBatch.take``), so N ranks with batch B train exactly
    like one process with batch N*B. All state (sampler position, both generators, call count) is saved, so
    resume is exact.
    """

    def __init__(
        self,
        images: Tensor,
        cfg: DataConfig,
        patch: PatchConfig,
        total_calls: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.images = images  # [N, C, R, R]
        self.cfg, self.patch, self.total_calls = cfg, patch, max(total_calls, 1)
        self.resolution = images.shape[-1]
        self.sampler = ShardedBatchSampler(images.shape[0], cfg.batch_size, seed, rank, world_size)
        self.size_gen = torch.Generator().manual_seed(seed + 1_000_003)
        self.crop_gen = torch.Generator().manual_seed(seed + 2_000_003)
        self.rank, self.world_size = rank, world_size
        self.calls = 0
        self.patches_seen = 0  # Patch Diffusion's progress unit: a patch counts as an image
        self.pixels_seen = 0
        self.last_patch = self.resolution

    def next_batch(self, device: torch.device) -> PatchBatch:
        size = draw_patch_size(self.resolution, self.patch, self.size_gen, self.calls / self.total_calls)
        mul = batch_multiplier(self.resolution, size, self.patch.batch_mul)
        idx = torch.cat([self.sampler.next_indices() for _ in range(mul)])
        b, w = self.cfg.batch_size, self.world_size
        # this rank's rows of the global batch: chunk j of the sampler holds ranks' slices of b in rank order
        take = (torch.arange(mul)[:, None] * b * w + self.rank * b + torch.arange(b)).flatten()  # [B*mul]
        n_global = b * w * mul
        imgs = self.images[idx]  # [B*mul, C, R, R]
        if self.cfg.hflip:
            flip = torch.rand(n_global, generator=self.crop_gen)[take] < 0.5
            imgs = torch.where(flip[:, None, None, None], imgs.flip(-1), imgs)
        patches, pos, _ = random_crops(imgs, size, self.crop_gen, take, n_global)
        self.calls += 1
        self.patches_seen += len(idx)
        self.pixels_seen += len(idx) * size * size
        self.last_patch = size
        return PatchBatch(patches.to(device, non_blocking=True), pos.to(device, non_blocking=True), take, n_global)

    def state_dict(self) -> dict:
        return {
            "sampler": self.sampler.state_dict(),
            "size_gen": self.size_gen.get_state(),
            "crop_gen": self.crop_gen.get_state(),
            "calls": self.calls,
            "patches_seen": self.patches_seen,
            "pixels_seen": self.pixels_seen,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.size_gen.set_state(state["size_gen"])
        self.crop_gen.set_state(state["crop_gen"])
        self.calls = int(state["calls"])
        self.patches_seen = int(state.get("patches_seen", 0))
        self.pixels_seen = int(state.get("pixels_seen", 0))
