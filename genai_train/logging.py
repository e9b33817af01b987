"""Run logging: tqdm progress, JSONL metrics, TensorBoard scalars and images. Only rank 0 writes."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["RunLogger", "to_uint8_hwc"]


def to_uint8_hwc(img: Any) -> np.ndarray:
    """Accept HWC uint8, or CHW / HWC float in [0, 1]; return HWC uint8 (grey -> 3 channels)."""
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu()
        if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[-1] not in (1, 3, 4):
            img = img.permute(1, 2, 0)
        img = img.numpy()
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img


class RunLogger:
    """Writes ``metrics.jsonl`` and TensorBoard event files under ``run_dir``; a no-op when disabled."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        self._last: tuple[float, int] | None = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow

                    self._tb = SummaryWriter(str(self.run_dir / "tb"))
                except ImportError:
                    self.info("tensorboard is not installed; scalars go to metrics.jsonl only")

    def log(self, step: int, **scalars: float) -> dict:
        """Record scalars for ``step``; adds ``steps_per_s`` since the previous call."""
        now = time.perf_counter()
        row: dict[str, Any] = {"step": int(step)}
        for k, v in scalars.items():
            v = v.item() if isinstance(v, torch.Tensor) else v
            row[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        if self._last is not None and step > self._last[1]:
            row["steps_per_s"] = (step - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, step)
        if self.enabled:
            row["time"] = time.time()
            self._jsonl.write(json.dumps(row) + "\n")
            if self._tb is not None:
                for k, v in row.items():
                    if k not in ("step", "time") and isinstance(v, float) and math.isfinite(v):
                        self._tb.add_scalar(k, v, step)
        return row

    def image(self, tag: str, step: int, img: Any) -> Path | None:
        """Save ``run_dir/images/<tag>_<step>.png`` and log it to TensorBoard."""
        if not self.enabled:
            return None
        import imageio.v3 as iio

        arr = to_uint8_hwc(img)
        path = self.run_dir / "images" / f"{tag.replace('/', '_')}_{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, arr)
        if self._tb is not None:
            self._tb.add_image(tag, arr, step, dataformats="HWC")
        return path

    def progress(self, total: int, initial: int = 0, desc: str = ""):
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=not self.enabled,
            dynamic_ncols=True,
            unit="step",
            file=sys.stderr,
            mininterval=1.0,
        )

    def info(self, msg: str) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stderr)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
