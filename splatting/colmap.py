"""COLMAP scenes -> pinhole views, images and SfM points, via ``pycolmap.Reconstruction``.

Supports binary and text models in ``<scene>/sparse/0`` or ``<scene>/sparse``; camera models SIMPLE_PINHOLE,
PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV (the distorted ones are undistorted to a pinhole camera with the
same intrinsics); one camera per image or shared cameras, and mixed image sizes. Images are downscaled
by ``factor`` (resized copies cached as PNG outside the scene folder); the world is normalized as in
gsplat's parser (cameras' mean up -> +z, centred on the median focus point, median camera distance 1,
points' principal axes aligned; :mod:`splatting.frames`); every ``test_every``-th image (sorted by name) is
held out for testing.

Every image (training and held-out) is decoded once before the scene is returned, so a truncated or corrupt
file fails the load (one error naming every bad file) before a run writes anything; ``skip_unreadable=True``
drops such views from their split with a warning instead. ``Scene.report`` says what was loaded and what
was skipped and why (:func:`format_report`, in :mod:`splatting.scene_report`, turns it into lines a run prints
at its start).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from splatting.frames import normalization_dict, normalization_transform
from splatting.scene_report import _shown, _size_report, check_image, format_report

__all__ = [
    "SUPPORTED_MODELS",
    "View",
    "Scene",
    "SceneError",
    "find_sparse_dir",
    "load_scene",
    "undistort_image",
    "distort_points",
    "format_report",
    "check_image",
]

SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class SceneError(ValueError):
    """The scene folder cannot be loaded; the message says what is missing and how to fix it."""


@dataclass
class View:
    """One registered image as a pinhole camera at the loaded resolution."""

    name: str
    image_path: Path
    K: Tensor  # [3, 3] at the loaded (downscaled) resolution
    camtoworld: Tensor  # [4, 4] in the normalized world
    width: int
    height: int
    model: str = "PINHOLE"
    dist: tuple[float, ...] = ()  # k1, k2, p1, p2 (zeros where the model has none)
    orig_width: int = 0  # the image file's size (the COLMAP camera's), before downscaling
    orig_height: int = 0

    @property
    def viewmat(self) -> Tensor:
        return torch.linalg.inv(self.camtoworld)


@dataclass
class Scene:
    root: Path
    train: list[View]
    test: list[View]
    points: Tensor  # [P, 3] normalized world
    point_colors: Tensor  # [P, 3] in [0, 1]
    scene_scale: float  # max camera distance from the camera centroid
    transform: Tensor  # [4, 4] float64, COLMAP world -> normalized world (similarity s R x + t)
    factor: int = 1
    cache_dir: Path | None = None
    prescaled_dir: Path | None = None  # a complete <scene>/images_<factor> folder, used instead of resizing
    report: dict = field(default_factory=dict, repr=False)
    _images: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def image(self, view: View) -> Tensor:
        """[H, W, 3] float in [0, 1], undistorted and resized; cached in memory."""
        if view.name not in self._images:
            self._images[view.name] = _read_view_image(view, self.factor, self.cache_dir, self.prescaled_dir)
        return self._images[view.name]

    @property
    def normalization(self) -> dict:
        """The similarity x_n = s R x + t from the capture's COLMAP frame to the normalized world: ``scale`` s,
        ``rotation`` R (row-major 3x3), ``translation`` t, and ``center`` (the COLMAP point mapped to 0)."""
        return normalization_dict(self.transform)


def find_sparse_dir(root: Path) -> Path:
    """``root/sparse/0`` if it holds a model, else ``root/sparse``."""
    for cand in (root / "sparse" / "0", root / "sparse"):
        if cand.is_dir() and any((cand / f"cameras{ext}").exists() for ext in (".bin", ".txt")):
            return cand
    raise SceneError(
        f"{root}: no COLMAP model found; expected {root}/sparse/0 or {root}/sparse holding "
        f"cameras, images and points3D (.bin or .txt); run COLMAP's mapper or pass --scene to "
        f"a scene folder"
    )


def distort_points(model: str, dist: tuple[float, ...], xy: Tensor) -> Tensor:
    """Apply the COLMAP lens model to normalized camera coordinates. xy [..., 2] -> [..., 2]."""
    k1, k2, p1, p2 = (tuple(dist) + (0.0, 0.0, 0.0, 0.0))[:4]
    x, y = xy.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return torch.stack([xd, yd], dim=-1)


def undistort_image(img: Tensor, K: Tensor, model: str, dist: tuple[float, ...]) -> Tensor:
    """Resample a distorted image [H, W, 3] to the pinhole camera with the same K (bilinear)."""
    if not any(abs(d) > 0 for d in dist):
        return img
    h, w = img.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    K = K.double()
    xy = torch.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1]], dim=-1)
    d = distort_points(model, dist, xy)
    u = d[..., 0] * K[0, 0] + K[0, 2]
    v = d[..., 1] * K[1, 1] + K[1, 2]
    grid = torch.stack([2 * (u + 0.5) / w - 1, 2 * (v + 0.5) / h - 1], dim=-1).float()[None]
    out = torch.nn.functional.grid_sample(
        img.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0].permute(1, 2, 0)


def _camera_intrinsics(cam) -> tuple[Tensor, str, tuple[float, ...]]:
    name = cam.model.name
    p = [float(v) for v in cam.params]
    if name not in SUPPORTED_MODELS:
        raise SceneError(
            f"camera {cam.camera_id} uses COLMAP model {name}, which is not supported; supported "
            f"models: {', '.join(SUPPORTED_MODELS)} (undistort the images with "
            f"`colmap image_undistorter` first)"
        )
    if name == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], ()
    elif name == "PINHOLE":
        fx, fy, cx, cy = p[:4]
        dist = ()
    elif name == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], (p[3], 0.0, 0.0, 0.0)
    elif name == "RADIAL":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], (p[3], p[4], 0.0, 0.0)
    else:  # OPENCV
        fx, fy, cx, cy = p[:4]
        dist = tuple(p[4:8])
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return K, name, dist


def _scan_images(image_dir: Path) -> dict[str, Path]:
    out = {}
    for dirpath, _, files in os.walk(image_dir):
        for f in files:
            if f.endswith(IMAGE_EXTS):
                p = Path(dirpath) / f
                out[str(p.relative_to(image_dir))] = p
    return out


def load_scene(
    root: str | os.PathLike,
    factor: int = 1,
    test_every: int = 8,
    normalize: bool = True,
    image_dir: str = "images",
    cache_dir: str | os.PathLike | None = None,
    skip_unreadable: bool = False,
    check_images: bool = True,
) -> Scene:
    """Read ``root`` (a COLMAP scene folder) into train/test :class:`View` lists and SfM points.

    ``check_images`` decodes every listed image now (not at its first use); bad ones (missing, unreadable,
    not the size of their camera) raise one :class:`SceneError` naming them all, or with ``skip_unreadable``
    are dropped from their split (the split itself is fixed by the sorted names of all registered images, so
    the held-out views stay the same) with a warning."""
    import pycolmap

    root = Path(root)
    if not root.is_dir():
        raise SceneError(
            f"scene folder {root} does not exist; pass --scene to a COLMAP scene folder (with images/ and sparse/)"
        )
    if factor < 1:
        raise SceneError(f"data factor must be >= 1, got {factor}")
    sparse = find_sparse_dir(root)
    images_root = root / image_dir
    if not images_root.is_dir():
        raise SceneError(
            f"{root}: image folder {images_root} is missing; the COLMAP model lists images "
            f"that must be there (pass data.image_dir if they live elsewhere)"
        )
    try:
        rec = pycolmap.Reconstruction(str(sparse))
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError on broken files
        raise SceneError(f"{sparse}: cannot read the COLMAP model ({type(e).__name__}: {e})") from e
    reg = sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name)
    if not reg:
        raise SceneError(
            f"{sparse}: the model has zero registered images; rerun COLMAP's mapper (it could not pose any image)"
        )
    files = _scan_images(images_root)
    missing = [rec.images[i].name for i in reg if rec.images[i].name not in files]
    if missing and not skip_unreadable:
        raise SceneError(
            f"{images_root}: {len(missing)} image(s) listed in the COLMAP model are missing: "
            f"{_shown(missing)}; copy them there or remove them from the model (or pass "
            f"data.skip_unreadable=true to train without them)"
        )
    skipped = [{"name": n, "reason": "missing file"} for n in missing]
    reg_set = set(reg)
    skipped += [
        {"name": im.name, "reason": "unregistered (COLMAP could not pose it)"}
        for i, im in sorted(rec.images.items(), key=lambda kv: kv[1].name)
        if i not in reg_set
    ]
    listed = {im.name for im in rec.images.values()}
    skipped += [{"name": n, "reason": "not in the COLMAP model"} for n in sorted(files) if n not in listed]

    views, c2ws = [], []
    for i in reg:
        im = rec.images[i]
        cam = rec.cameras[im.camera_id]
        K, model, dist = _camera_intrinsics(cam)
        w2c = np.eye(4)
        w2c[:3, :] = im.cam_from_world().matrix()
        c2w = np.linalg.inv(w2c)
        c2ws.append(c2w)
        views.append(
            View(
                name=im.name,
                image_path=files.get(im.name, images_root / im.name),
                K=K,
                camtoworld=torch.from_numpy(c2w),
                width=int(cam.width),
                height=int(cam.height),
                model=model,
                dist=dist,
                orig_width=int(cam.width),
                orig_height=int(cam.height),
            )
        )
    c2w_all = np.stack(c2ws)
    pts = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64).reshape(-1, 3)
    cols = np.array([p.color for p in rec.points3D.values()], dtype=np.float64).reshape(-1, 3) / 255.0
    transform = normalization_transform(c2w_all, pts) if normalize else np.eye(4)
    scale = float(np.linalg.norm(transform[:3, 0]))
    for v, c2w in zip(views, c2w_all):
        new = transform @ c2w
        new[:3, :3] /= scale  # keep the rotation orthonormal; the scale moves only positions
        v.camtoworld = torch.from_numpy(new)
    pts_n = pts @ transform[:3, :3].T + transform[:3, 3] if len(pts) else pts
    centers = np.stack([v.camtoworld[:3, 3].numpy() for v in views])
    scene_scale = float(np.linalg.norm(centers - centers.mean(0), axis=-1).max())

    if factor > 1:
        for v in views:
            w, h = max(1, round(v.width / factor)), max(1, round(v.height / factor))
            sx, sy = w / v.width, h / v.height
            v.K = v.K.clone()
            v.K[0] *= sx
            v.K[1] *= sy
            v.width, v.height = w, h
    for v in views:
        v.K = v.K.float()
        v.camtoworld = v.camtoworld.float()
    held_out = {v.name for j, v in enumerate(views) if test_every > 0 and j % test_every == 0}
    missing_set = set(missing)
    bad = {v.name: "missing file" for v in views if v.name in missing_set}
    if check_images:
        for v in views:
            if v.name not in bad:
                why = check_image(v.image_path, (v.orig_width, v.orig_height))
                if why:
                    bad[v.name] = why
    unreadable = {n: why for n, why in bad.items() if n not in missing_set}
    if unreadable and not skip_unreadable:
        listed_bad = [f"{images_root / n} ({why})" for n, why in unreadable.items()]
        raise SceneError(
            f"{len(unreadable)} image(s) of the scene cannot be used: {_shown(listed_bad, 5)}; re-export or "
            f"replace them, delete them from the COLMAP model, or pass data.skip_unreadable=true to drop them "
            f"from the split"
        )
    if bad:
        warnings.warn(
            f"{root}: {len(bad)} image(s) dropped from the split: "
            + _shown([f"{n} ({why})" for n, why in bad.items()], 5),
            stacklevel=2,
        )
    skipped = [x for x in skipped if x["name"] not in unreadable] + [
        {"name": n, "reason": "unreadable", "detail": why} for n, why in unreadable.items()
    ]
    test = [v for v in views if v.name in held_out and v.name not in bad]
    train = [v for v in views if v.name not in held_out and v.name not in bad]
    prescaled, prescaled_note = _prescaled_folder(root, factor, train + test)
    report = {
        "scene": str(root),
        "model": str(sparse),
        "cameras": _camera_report(rec, {rec.images[i].camera_id for i in reg}),
        "images": {
            "registered": len(reg),
            "used": len(train) + len(test),
            "train": len(train),
            "test": len(test),
            "skipped": len(skipped),
        },
        "skipped": skipped,
        "sizes": _size_report(train + test, factor),
        "factor": factor,
        "prescaled": prescaled_note,
        "held_out": [v.name for v in test],
        "points": int(len(pts)),
        "normalization": normalization_dict(torch.from_numpy(transform)) if normalize else None,
    }
    return Scene(
        root=root,
        train=train,
        test=test,
        points=torch.from_numpy(pts_n).float(),
        point_colors=torch.from_numpy(cols).float(),
        scene_scale=scene_scale,
        transform=torch.from_numpy(transform),
        factor=factor,
        cache_dir=Path(cache_dir) if cache_dir else None,
        prescaled_dir=prescaled,
        report=report,
    )


def _camera_report(rec, used_ids: set[int]) -> list[dict]:
    out = []
    for cid in sorted(used_ids):
        cam = rec.cameras[cid]
        _, model, dist = _camera_intrinsics(cam)
        out.append(
            {
                "id": int(cid),
                "model": model,
                "size": [int(cam.width), int(cam.height)],
                "distortion": list(dist),
                "undistorted": any(abs(d) > 0 for d in dist),
            }
        )
    return out


def _prescaled_candidates(folder: Path, view: View) -> list[Path]:
    return [folder / view.name, folder / Path(view.name).with_suffix(".png")]


def _prescaled_folder(root: Path, factor: int, views: list[View]) -> tuple[Path | None, dict | None]:
    """``root/images_<factor>`` if it holds every view's resized image; a partial one is ignored (said so)."""
    folder = root / f"images_{factor}"
    if factor == 1 or not folder.is_dir():
        return None, None
    found = sum(any(p.exists() for p in _prescaled_candidates(folder, v)) for v in views)
    note = {"dir": str(folder), "found": found, "needed": len(views), "used": found == len(views)}
    return (folder if note["used"] else None), note


def _cache_path(view: View, factor: int, cache_dir: Path | None, prescaled: Path | None = None) -> Path:
    """Resized copy of ``view``'s image: in ``prescaled`` (a complete ``<scene>/images_<factor>/``, COLMAP's own
    layout) when given, else a cache folder (``data.cache_dir`` or ``~/.cache/genai-train/<scene hash>``),
    never the scene folder, which may be shared and read-only."""
    base = view.image_path.parent.parent
    stem = Path(view.name).with_suffix(".png")
    if prescaled is not None:
        for ready in _prescaled_candidates(prescaled, view):
            if ready.exists():
                return ready
    if cache_dir is None:
        key = hashlib.sha1(str(base.resolve()).encode()).hexdigest()[:12]
        cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genai-train" / key
    return Path(cache_dir) / f"images_{factor}" / stem


def _read_view_image(view: View, factor: int, cache_dir: Path | None, prescaled: Path | None = None) -> Tensor:
    """Load, resize (cached on disk) and undistort one view's image -> [H, W, 3] float."""
    if factor > 1:
        cached = _cache_path(view, factor, cache_dir, prescaled)
        if cached.exists():
            pil = Image.open(cached).convert("RGB")
        else:
            pil = Image.open(view.image_path).convert("RGB").resize((view.width, view.height), Image.BICUBIC)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.png")
            pil.save(tmp)
            os.replace(tmp, cached)
    else:
        pil = Image.open(view.image_path).convert("RGB")
    if pil.size != (view.width, view.height):
        raise SceneError(
            f"{view.image_path}: image is {pil.size[0]}x{pil.size[1]} but its COLMAP camera "
            f"says {view.width}x{view.height} (after factor {factor}); the model and the "
            f"images do not match"
        )
    img = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)
    return undistort_image(img, view.K, view.model, view.dist)
