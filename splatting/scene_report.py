"""Image checks and the scene loader's report: :func:`check_image` (decode one file, compare its size with its
camera) and :func:`format_report` (``Scene.report`` as the lines a run prints at its start)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # splatting.colmap re-exports this module's public names, so no import of it at run time
    from splatting.colmap import View


def _shown(items: list[str], k: int = 10) -> str:
    return ", ".join(items[:k]) + (f" and {len(items) - k} more" if len(items) > k else "")


def check_image(path: Path, size: tuple[int, int] | None = None) -> str:
    """Decode ``path`` fully; '' if it is a readable image of ``size`` (w, h), else why not."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes every byte: truncated and corrupt files raise here, not at open
            got = im.size
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on broken files
        return f"cannot be decoded: {type(e).__name__}: {str(e).replace(repr(str(path)), 'it')}"
    if size is not None and got != tuple(size):
        return f"is {got[0]}x{got[1]} but its COLMAP camera says {size[0]}x{size[1]}"
    return ""


def _size_report(views: list[View], factor: int) -> dict:
    sizes: dict[str, int] = {}
    for v in views:
        key = f"{v.orig_width}x{v.orig_height}"
        sizes[key] = sizes.get(key, 0) + 1
    portrait = sum(v.orig_height > v.orig_width for v in views)
    landscape = sum(v.orig_width > v.orig_height for v in views)
    return {
        "original": sizes,
        "loaded": sorted({f"{v.width}x{v.height}" for v in views}),
        "mixed": len(sizes) > 1,
        "portrait": portrait,
        "landscape": landscape,
        "mixed_orientation": portrait > 0 and landscape > 0,
    }


def format_report(report: dict) -> list[str]:
    """The loader's report as lines for the start of a run."""
    if not report:
        return []
    lines = [f"scene {report['scene']} (model {report['model']}, {report['points']} SfM points)"]
    groups: dict[tuple, list[dict]] = {}
    for c in report["cameras"]:
        groups.setdefault((c["model"], c["undistorted"]), []).append(c)
    for (model, undistorted), cams in groups.items():
        how = "undistorted to a pinhole camera with the same intrinsics" if undistorted else "no undistortion needed"
        if len(cams) == 1:
            c = cams[0]
            dist = f" (distortion {', '.join(f'{d:g}' for d in c['distortion'])})" if undistorted else ""
            lines.append(f"  camera {c['id']}: {model} {c['size'][0]}x{c['size'][1]}, {how}{dist}")
        else:
            lines.append(f"  {len(cams)} cameras: {model}, {how}")
    im = report["images"]
    lines.append(
        f"  images: {im['registered']} registered, {im['used']} used ({im['train']} train / {im['test']} test), "
        f"{im['skipped']} skipped"
    )
    by_reason: dict[str, list[str]] = {}
    for x in report["skipped"]:
        by_reason.setdefault(x["reason"], []).append(x["name"] + (f" ({x['detail']})" if x.get("detail") else ""))
    for reason, names in by_reason.items():
        lines.append(f"  skipped, {reason}: {_shown(names, 5)}")
    sz = report["sizes"]
    line = f"  sizes: {', '.join(f'{k} ({n})' for k, n in sz['original'].items())}"
    if sz["mixed"]:
        line += "; MIXED sizes"
    if sz["mixed_orientation"]:
        line += f"; portrait ({sz['portrait']}) and landscape ({sz['landscape']}) views MIXED"
    line += f"; loaded at factor {report['factor']}: {', '.join(sz['loaded'])}"
    lines.append(line)
    pre = report.get("prescaled")
    if pre:
        if pre["used"]:
            lines.append(f"  using the resized images in {pre['dir']}")
        else:
            lines.append(
                f"  {pre['dir']} holds only {pre['found']} of {pre['needed']} images: IGNORED (resizing the "
                f"originals into the cache instead)"
            )
    lines.append(f"  held out for testing: {_shown(report['held_out'], 20) or 'none'}")
    return lines
