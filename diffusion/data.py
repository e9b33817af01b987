"""Image folder -> one cached tensor [N, C, R, R] in [-1, 1] (the per-step patch batches drawn from it are in
:mod:`diffusion.batches`).

Reads a folder recursively in every format Pillow opens (PNG, JPEG, WebP, BMP, GIF first frame, TIFF,
PGM/PPM/PBM, ...), in any of the modes real folders hold: grayscale, palette, grey+alpha and RGBA
(composited onto ``data.background``), 16-bit grayscale. Each image is brought to R x R once by the crop
policy ``data.crop`` (centre crop, a seeded random crop, a stretch, or padding), then kept in memory (and
optionally on disk, ``data.cache_dir``), so training never decodes a file twice. Unreadable files are
skipped, counted and listed; the run stops only when nothing is readable. With ``data.labels=folders``
the first-level subfolders are the classes.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from diffusion.batches import PatchBatch, PatchBatches  # noqa: F401  (re-exported: diffusion.train, tests)
from genai_train.run import path_field

# Pillow registers a few extensions only as stubs (scientific or video containers): not image folders.
_NOT_IMAGES = {".bufr", ".grib", ".h5", ".hdf", ".mpeg", ".mpg", ".emf", ".wmf", ".ps", ".eps"}


def image_suffixes() -> tuple[str, ...]:
    """Every file suffix Pillow can open here (PNG, JPEG, WebP, BMP, GIF, TIFF, PGM/PPM/PBM/PNM, ...)."""
    from PIL import Image

    Image.init()
    return tuple(
        sorted(e for e, f in Image.registered_extensions().items() if f in Image.OPEN and e not in _NOT_IMAGES)
    )


IMAGE_SUFFIXES = image_suffixes()
KINDS = "PNG/JPEG/WebP/BMP/GIF/TIFF/PGM/PPM"
CROPS = ("center", "random", "resize", "pad")


@dataclass
class DataConfig:
    """Where the training images come from and how they are prepared."""

    root: str = path_field("", "folder of images (searched recursively)")
    resolution: int = field(
        default=64, metadata={"help": "training side R in pixels (images are made R x R by data.crop)"}
    )
    channels: Literal["auto"] | int = field(
        default="auto",
        metadata={
            "help": "auto: 1 if every image is grayscale, else 3; or 3 = RGB, 1 = grayscale (UNet: channels + 2)"
        },
    )
    crop: Literal["center", "random", "resize", "pad"] = field(
        default="center",
        metadata={
            "help": "non-square images: center = shorter side to R, centre square; random = shorter side to R, a "
            "square at a random position drawn once per image at load time from run.seed (fixed for the run, not "
            "redrawn per step); resize = stretch to R x R; pad = longer side to R, padded with data.background"
        },
    )
    labels: Literal["none", "folders"] = field(
        default="none",
        metadata={"help": "none = unconditional; folders = each first-level subfolder is a class (class-conditional)"},
    )
    background: tuple[int, int, int] = field(
        default=(255, 255, 255), metadata={"help": "RGB colour transparent pixels are composited onto"}
    )
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    batch_size: int = field(default=64, metadata={"help": "images per step at full size (per process)"})
    cache_dir: str = path_field("", "also keep the decoded tensor here ('' = memory only)")

    def __post_init__(self) -> None:
        if self.resolution < 4:
            raise ValueError(f"data.resolution must be >= 4 pixels, got {self.resolution}")
        if self.channels not in ("auto", 1, 3):
            raise ValueError(f"data.channels must be auto, 3 (RGB) or 1 (grayscale), got {self.channels!r}")
        if self.crop not in CROPS:
            raise ValueError(f"data.crop must be one of {', '.join(CROPS)}; got {self.crop!r}")
        if self.labels not in ("none", "folders"):
            raise ValueError(f"data.labels must be none or folders; got {self.labels!r}")
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
    grey: int = 0  # images whose pixels are all grey (R = G = B)
    changed: int = 0  # non-square images the crop policy cut, stretched or padded
    classes: list[str] = field(default_factory=list)  # class names (data.labels=folders), index = label
    labels: Tensor | None = None  # [N] int64 class index of each image, or None (unconditional)
    channels: int = 3  # the channels the images were returned with

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


def _resize(t: Tensor, nh: int, nw: int) -> Tensor:
    """[1, C, H, W] -> [1, C, nh, nw], bicubic (antialiased when shrinking)."""
    h, w = t.shape[-2:]
    if (nh, nw) == (h, w):
        return t
    return torch.nn.functional.interpolate(
        t, size=(nh, nw), mode="bicubic", antialias=nh < h or nw < w, align_corners=False
    )


def crop_to_square(
    arr: np.ndarray,
    resolution: int,
    crop: str = "center",
    background: tuple[float, ...] = (1.0, 1.0, 1.0),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """[H, W, C] in [0, 1] -> [C, R, R] by the crop policy (see DataConfig.crop).

    center / random: shorter side to R (bicubic), then the centre square / a square at an offset drawn from
    ``rng``; resize: both sides to R; pad: longer side to R, the rest filled with ``background`` (per channel).
    """
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]  # [1, C, H, W]
    h, w = t.shape[-2:]
    r = resolution
    if crop == "resize":
        return _resize(t, r, r)[0].clamp(0, 1).numpy()
    if crop == "pad":
        s = r / max(h, w)
        nh, nw = min(r, max(1, round(h * s))), min(r, max(1, round(w * s)))
        t = _resize(t, nh, nw)
        out = torch.tensor(background[: t.shape[1]], dtype=t.dtype)[:, None, None].repeat(1, r, r)  # [C, R, R]
        top, left = (r - nh) // 2, (r - nw) // 2
        out[:, top : top + nh, left : left + nw] = t[0]
        return out.clamp(0, 1).numpy()
    s = r / min(h, w)
    nh, nw = max(r, round(h * s)), max(r, round(w * s))
    t = _resize(t, nh, nw)
    if crop == "random":
        rng = rng or np.random.default_rng(0)
        top, left = int(rng.integers(0, nh - r + 1)), int(rng.integers(0, nw - r + 1))
    else:
        top, left = (nh - r) // 2, (nw - r) // 2
    return t[0, :, top : top + r, left : left + r].clamp(0, 1).numpy()  # [C, R, R]


def _resize_center_crop(arr: np.ndarray, resolution: int) -> np.ndarray:
    """[H, W, C] -> [C, R, R]: shorter side to R (bicubic, antialiased), then the centre square."""
    return crop_to_square(arr, resolution, "center")


def decode_image(path: Path, cfg: DataConfig, report: LoadReport, rng: np.random.Generator | None = None) -> np.ndarray:
    """One file -> float32 [C, R, R] in [0, 1] (C = 3 for data.channels=auto). Raises on unreadable files."""
    from PIL import Image

    channels = 3 if cfg.channels == "auto" else cfg.channels
    if _png_16bit_colour(path):
        try:
            arr = _read_png_16bit(path, cfg.background, channels, report)
        except ImportError:
            arr = None
            warnings.warn(
                f"{path} is a 16-bit colour PNG; Pillow reads it at 8 bits. `pip install pypng` to keep full precision",
                stacklevel=3,
            )
        if arr is not None:
            return _finish(arr, path, cfg, report, rng)
    with Image.open(path) as img:
        img.seek(0)  # GIF / animated WebP: the first frame
        img.load()  # forces a full decode: truncated files raise here
        arr = _to_float_array(img, cfg.background, channels, report)
    return _finish(arr, path, cfg, report, rng)


def _finish(
    arr: np.ndarray, path: Path, cfg: DataConfig, report: LoadReport, rng: np.random.Generator | None
) -> np.ndarray:
    h, w = arr.shape[:2]
    if (cfg.crop == "pad" and max(h, w) < cfg.resolution) or (cfg.crop != "pad" and min(h, w) < cfg.resolution):
        report.upscaled.append(f"{path} ({w}x{h})")
    if h != w:
        report.changed += 1
    if arr.shape[-1] == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        report.grey += 1
    elif arr.shape[-1] == 1:
        report.grey += 1
    bg = np.asarray(cfg.background, np.float32) / 255.0
    if arr.shape[-1] == 1:
        bg = np.asarray([bg @ np.asarray([0.299, 0.587, 0.114], np.float32)])  # the background's luma
    return crop_to_square(arr, cfg.resolution, cfg.crop, tuple(float(v) for v in bg), rng)


CROP_WORDS = {
    "center": "cut to their centre square",
    "random": "cut to a square at a position drawn once per image from run.seed",
    "resize": "stretched to a square (aspect ratio changed)",
    "pad": "padded to a square with data.background",
}


def class_of(path: Path, root: Path) -> str | None:
    """The first-level subfolder of ``root`` holding ``path`` (its class), None for a file directly in root."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def _cache_key(files: list[Path], cfg: DataConfig, seed: int) -> str:
    h = hashlib.sha256()
    h.update(repr((cfg.resolution, cfg.channels, tuple(cfg.background), cfg.crop, cfg.labels, seed)).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _class_folders(files: list[Path], root: Path) -> list[str]:
    """Sorted names of the first-level subfolders that hold image files."""
    return sorted({c for c in (class_of(p, root) for p in files) if c is not None})


def load_image_folder(cfg: DataConfig, log=print, seed: int = 0) -> tuple[Tensor, LoadReport]:
    """Decode every image under ``cfg.root`` once. Returns ([N, C, R, R] float32 in [-1, 1], report).

    ``report.channels`` is the resolved channel count (``data.channels=auto``: 1 if every image is grey);
    ``report.labels`` [N] and ``report.classes`` hold the class of each image with ``data.labels=folders``.
    ``seed`` fixes the crop positions of ``data.crop=random``.
    """
    if not cfg.root:
        raise ImageFolderError(f"no training images given; pass --data FOLDER (a folder of {KINDS} images)")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise ImageFolderError(f"{root}: no such folder; pass --data to a folder of {KINDS} images")
    if not root.is_dir():
        raise ImageFolderError(f"{root}: is a file, not a folder; pass --data to the folder that holds the images")
    files, other = list_files(root)
    report = LoadReport(files=len(files), other_files=other)
    if not files and not other:
        raise ImageFolderError(
            f"{root}: the folder is empty (no files, searched recursively); pass --data to a folder of {KINDS} images"
        )
    if not files:
        raise ImageFolderError(
            f"{root}: not an image folder (0 images among {other} files; none has a suffix Pillow reads, e.g. "
            f".png .jpg .webp .bmp .gif .tif .pgm .ppm); pass --data to a folder of {KINDS} images"
        )
    folders = _class_folders(files, root)
    if cfg.labels == "folders":
        loose = [p for p in files if class_of(p, root) is None]
        if loose:
            raise ImageFolderError(
                f"{root}: data.labels=folders takes each subfolder as a class, but {len(loose)} images lie directly "
                f"in the folder (e.g. {loose[0].name}); move them into a class subfolder or use data.labels=none"
            )
        report.classes = folders
    elif len(folders) >= 2:
        shown = ", ".join(folders[:5]) + (", ..." if len(folders) > 5 else "")
        log(
            f"found {len(folders)} class subfolders ({shown}): training one unconditional model on all of them; "
            "pass --data.labels=folders for a class-conditional model"
        )
    cache_path = None
    if cfg.cache_dir:
        cache_path = Path(cfg.cache_dir) / f"images_{_cache_key(files, cfg, seed)}.pt"
        if cache_path.exists():
            cached = torch.load(cache_path, weights_only=True)
            log(f"loaded {cached['images'].shape[0]} decoded images from cache {cache_path}")
            report.classes, report.channels = list(cached["classes"]), cached["images"].shape[1]
            report.labels = cached["labels"] if report.classes else None
            return cached["images"], report
    arrays, labels = [], []
    for k, p in enumerate(files):
        try:
            arrays.append(decode_image(p, cfg, report, rng=np.random.default_rng([seed, k])))
        except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            report.skipped.append((str(p), f"{type(e).__name__}: {e}"))
            continue
        if report.classes:
            labels.append(report.classes.index(class_of(p, root)))
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
    n = len(arrays)
    for line in report.summary(n, cfg.background):
        log(line)
    if report.changed:
        log(
            f"data.crop={cfg.crop}: {report.changed} of {n} images are not square and were {CROP_WORDS[cfg.crop]} "
            f"at {cfg.resolution}x{cfg.resolution} (data.crop=center|random|resize|pad chooses)"
        )
    else:
        log(f"data.crop={cfg.crop}: all {n} images are square, none changed")
    if cfg.channels == "auto":
        if report.grey == n:
            images = images[:, :1].contiguous()  # R = G = B: one channel loses nothing
            log(
                f"data.channels=auto: all {n} images are grayscale, training a 1-channel model "
                "(data.channels=3 for RGB)"
            )
        else:
            log(
                f"data.channels=auto: {n - report.grey} of {n} images have colour, training an RGB model "
                "(data.channels=1 for grayscale)"
            )
    elif cfg.channels == 3 and report.grey == n:
        log(
            f"all {n} images are grayscale but data.channels=3: the model learns R = G = B (data.channels=1 is cheaper)"
        )
    report.channels = images.shape[1]
    if report.classes:
        report.labels = torch.tensor(labels, dtype=torch.int64)  # [N]
        counts = torch.bincount(report.labels, minlength=len(report.classes)).tolist()
        log(
            f"data.labels=folders: {len(report.classes)} classes: "
            + ", ".join(f"{c} ({k})" for c, k in zip(report.classes[:10], counts))
            + (" ..." if len(report.classes) > 10 else "")
        )
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        lab = report.labels if report.labels is not None else torch.zeros(0, dtype=torch.int64)
        torch.save({"images": images, "labels": lab, "classes": report.classes}, tmp)
        tmp.replace(cache_path)
    return images, report
