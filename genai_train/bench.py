"""Shared helpers for benchmarks/: environment record and result files (see BENCHMARKS.md)."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["environment", "claim", "write_result", "RESULTS_DIR"]

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
EXCEPT_RESULTS = ":(exclude,top)benchmarks/results"  # git pathspec: the whole tree but the results folder


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10)
    return out.stdout.strip()


def environment() -> dict:
    try:
        commit = _git("rev-parse", "--short", "HEAD") or "unknown"
        # the tree the result came from is not the commit (rerun after committing); a benchmark's own figures
        # written into benchmarks/results before its JSON are outputs, not changes to what it measures
        if commit != "unknown" and _git("status", "--porcelain", "--untracked-files=no", "--", ":/", EXCEPT_RESULTS):
            commit += "+changes"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "commit": commit,
        "device": dev,
        "device_name": torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def claim(name: str, value: float, op: str, target: float) -> dict:
    if op not in ("<=", ">="):
        raise ValueError(f"claim op must be '<=' or '>=', got {op!r}")
    holds = value <= target if op == "<=" else value >= target
    return {"name": name, "value": value, "op": op, "target": target, "holds": bool(holds)}


def first_crossing(points: list[tuple[float, float]], target: float) -> float | None:
    """The x at which a falling curve of (x, y) points first reaches y <= target, linearly interpolated between
    the point before and the first point at or below it; the first x if the curve starts there; None if never."""
    prev = None
    for x, y in points:
        if y <= target:
            if prev is None:
                return x
            return prev[0] + (prev[1] - target) / (prev[1] - y) * (x - prev[0])
        prev = (x, y)
    return None


def write_result(
    name: str,
    config: dict,
    claims: list[dict],
    data: dict[str, Any],
    quick: bool = False,
    out_dir: str | Path | None = None,
) -> Path:
    """Write ``benchmarks/results/<name>.json`` (``<name>.quick.json`` for --quick runs)."""
    out = Path(out_dir) if out_dir else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / (f"{name}.quick.json" if quick else f"{name}.json")
    record = {"benchmark": name, **environment(), "quick": quick, "config": config, "claims": claims, "data": data}
    path.write_text(json.dumps(record, indent=2, default=float))
    return path
