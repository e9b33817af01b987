"""Atomic checkpoints with a completion marker, keep-last-k and ``resume: auto``.

Layout of a checkpoint directory::

    ckpt/
      step_000000100/state.pt    torch.save of a nested dict of tensors / numbers / strings
      step_000000100/COMPLETE    JSON {task, step, bytes, sha256}; written last, after fsync + rename

A checkpoint counts only once ``COMPLETE`` exists and its size and hash match ``state.pt``: a process
killed at any moment leaves either the previous complete checkpoints untouched, or a ``.tmp-*`` folder
that is ignored and cleaned up later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["Checkpointer", "CheckpointConfig", "CheckpointError", "RunDirError", "RUN_MARKER"]

_STEP_RE = re.compile(r"^step_(\d+)$")
MARKER = "COMPLETE"
RUN_MARKER = ".genai-train-run"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (wrong task, incompatible config)."""


class RunDirError(RuntimeError):
    """A run directory that we must not write into."""


@dataclasses.dataclass
class CheckpointConfig:
    every: int = dataclasses.field(
        default=500, metadata={"help": "save a checkpoint every N optimizer steps (0: only at the end)"}
    )
    keep: int = dataclasses.field(default=3, metadata={"help": "keep the newest K complete checkpoints"})
    resume: Literal["auto", "never"] = dataclasses.field(
        default="auto", metadata={"help": "auto: continue from the newest complete checkpoint in the run dir"}
    )

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"ckpt.every must be >= 0, got {self.every}")
        if self.keep < 1:
            raise ValueError(f"ckpt.keep must be >= 1, got {self.keep}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class Checkpointer:
    """``save(step, state)`` atomically; ``load_latest()`` returns the newest complete one."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, task: str = "", enabled: bool = True):
        self.dir = Path(directory)
        self.keep = keep
        self.task = task
        self.enabled = enabled  # only rank 0 writes

    # -- listing -------------------------------------------------------------------------------------
    def _step_dirs(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            m = _STEP_RE.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def complete_steps(self) -> list[int]:
        """Steps whose checkpoint has its completion marker, oldest first."""
        return [s for s, p in self._step_dirs() if (p / MARKER).exists()]

    def latest_step(self) -> int | None:
        steps = self.complete_steps()
        return steps[-1] if steps else None

    # -- saving --------------------------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any]) -> Path | None:
        if not self.enabled:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"step_{step:09d}"
        tmp = self.dir / f".tmp-step_{step:09d}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        state_path = tmp / "state.pt"
        with open(state_path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): move the old one aside first
            trash = self.dir / f".old-{final.name}-{time.monotonic_ns()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.dir)
        meta = {
            "task": self.task,
            "step": step,
            "bytes": (final / "state.pt").stat().st_size,
            "sha256": _sha256(final / "state.pt"),
            "time": time.time(),
        }
        _write_durable(final / MARKER, json.dumps(meta).encode())
        _fsync_dir(final)
        self._prune()
        return final

    def _prune(self) -> None:
        complete = self.complete_steps()
        for step in complete[: max(0, len(complete) - self.keep)]:
            shutil.rmtree(self.dir / f"step_{step:09d}", ignore_errors=True)
        for p in self.dir.iterdir():  # leftovers of killed saves (never a complete checkpoint)
            if p.name.startswith((".tmp-", ".old-")) and str(os.getpid()) not in p.name:
                shutil.rmtree(p, ignore_errors=True)

    # -- loading -------------------------------------------------------------------------------------
    def _verify(self, path: Path) -> dict:
        meta = json.loads((path / MARKER).read_text())
        state_file = path / "state.pt"
        if not state_file.exists():
            raise CheckpointError(f"{path}: state.pt is missing")
        if state_file.stat().st_size != meta.get("bytes"):
            raise CheckpointError(
                f"{path}: state.pt has {state_file.stat().st_size} bytes, expected {meta.get('bytes')}"
            )
        if meta.get("sha256") and _sha256(state_file) != meta["sha256"]:
            raise CheckpointError(f"{path}: state.pt does not match its recorded hash (corrupt)")
        return meta

    def load(self, step: int, map_location: Any = "cpu") -> dict:
        path = self.dir / f"step_{step:09d}"
        meta = self._verify(path)
        if self.task and meta.get("task") and meta["task"] != self.task:
            raise CheckpointError(
                f"{path} was written by task '{meta['task']}', not '{self.task}'; point --run.dir at a "
                f"{self.task} run or a new folder"
            )
        return torch.load(path / "state.pt", map_location=map_location, weights_only=True)

    def load_latest(self, map_location: Any = "cpu") -> tuple[int, dict] | None:
        """Newest complete, intact checkpoint; damaged ones are skipped with a warning."""
        for step in reversed(self.complete_steps()):
            path = self.dir / f"step_{step:09d}"
            try:
                return step, self.load(step, map_location)
            except CheckpointError as e:
                if "written by task" in str(e):
                    raise
                warnings.warn(f"skipping checkpoint {path}: {e}; falling back to an older one", stacklevel=2)
            except Exception as e:  # truncated zip, unpickling error, bad JSON marker
                warnings.warn(
                    f"skipping unreadable checkpoint {path}: {type(e).__name__}: {e}; falling back to an older one",
                    stacklevel=2,
                )
        return None
