"""Loss curves as PNG without a plotting library (PIL only): one line per run over a shared x axis."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["line_chart"]

_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (23, 190, 207)]


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (720, 440),
) -> Path:
    """Draw ``{name: [(x, y), ...]}`` as lines with a legend and axis ranges; returns the PNG path."""
    W, H = size
    left, right, top, bottom = 70, 20, 36, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    if not pts:
        raise ValueError("line_chart: no points to draw")
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (W - left - right),
            top + (y1 - y) / (y1 - y0) * (H - top - bottom),
        )

    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        _, py = px(x0, y)
        d.line([left - 4, py, left, py], fill=(0, 0, 0))
        d.text((4, py - 6), f"{y:.3g}", fill=(0, 0, 0))
        x = x0 + (x1 - x0) * i / 4
        qx, _ = px(x, y0)
        d.line([qx, H - bottom, qx, H - bottom + 4], fill=(0, 0, 0))
        d.text((qx - 14, H - bottom + 8), f"{x:.3g}", fill=(0, 0, 0))
    d.text((W // 2 - 6 * len(title) // 2, 10), title, fill=(0, 0, 0))
    d.text((W // 2 - 30, H - 18), xlabel, fill=(0, 0, 0))
    d.text((4, 18), ylabel, fill=(0, 0, 0))
    for i, (name, s) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        if len(s) > 1:
            d.line([px(*p) for p in s], fill=color, width=2)
        d.text((W - right - 150, top + 8 + 14 * i), f"- {name}", fill=color)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
