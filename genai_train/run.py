"""The one run lifecycle every trainer uses: validate, then write; resume named stateful objects; rank 0 writes.

Order of a run's start (nothing lands in the run directory until every check that can refuse the run passed):

1. the task validates its inputs (data, model source) *before* constructing :class:`Run`;
2. ``Run(...)`` joins the torchrun process group, checks that the run directory is ours (or new), loads the
   newest complete checkpoint and compares the config it was written with (paths compared after resolving
   them, so ``data/x``, ``./data/x`` and ``/abs/data/x`` are one run); a refused resume raises here;
3. the trainer builds its stateful objects and calls :meth:`Run.restore` with them by name; once each object has
   taken its saved state (an object that does not fit refuses the resume too), rank 0 creates the folder, writes
   ``config.yaml`` and opens the logger (tqdm, JSONL, TensorBoard);
4. :meth:`Run.save` writes the objects (plus every RNG state and the config) as one atomic checkpoint.

A trainer's loop then reads like nanoGPT's::

    run = Run("splat", cfg, shape_keys=("sh_degree",))
    model, opt = ..., ...
    step = run.restore(model=model, optimizer=opt, data=batches)
    while step < cfg.train.steps:
        ...; step += 1
        run.log(step, loss=loss) ; run.maybe_save(step, model=model, optimizer=opt, data=batches)
    run.close()
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from genai_train.checkpoint import RUN_MARKER, Checkpointer, RunDirError
from genai_train.config import ConfigError, config_diff, config_to_dict, save_config
from genai_train.device import select_device
from genai_train.distributed import DistInfo, barrier, init_distributed
from genai_train.logging import RunLogger
from genai_train.seed import rng_state, seed_everything, set_rng_state

__all__ = [
    "RunConfig",
    "LoopConfig",
    "Run",
    "Stateful",
    "check_resume_config",
    "check_run_dir",
    "resolved_config",
    "path_field",
]


def path_field(default: str = "", help: str = "") -> Any:
    """A string config field holding a file or folder path: compared after resolving it on resume."""
    return field(default=default, metadata={"help": help, "path": True})


@dataclass
class RunConfig:
    """Where a run writes and how it runs (the same keys in every task)."""

    dir: str = field(default="runs/run", metadata={"help": "run directory (config, metrics, checkpoints, outputs)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps"})
    seed: int = field(default=0, metadata={"help": "seed of python, numpy and torch RNGs"})
    threads: int = field(
        default=0, metadata={"help": "CPU threads for PyTorch (0: its default; 1 is fastest on a busy machine)"}
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        default="auto",
        metadata={
            "help": "auto = bf16 autocast on CUDA, fp32 elsewhere; bf16 = bf16 autocast on CUDA and the CPU; "
            "fp16 = fp16 autocast with a gradient scaler on CUDA (fp32 elsewhere, said so)"
        },
    )
    log_every: int = field(default=10, metadata={"help": "log metrics every N optimizer steps"})
    tensorboard: bool = field(default=True, metadata={"help": "also write TensorBoard event files under tb/"})

    def __post_init__(self):
        if self.log_every < 1:
            raise ValueError(f"run.log_every must be >= 1, got {self.log_every}")
        if self.threads < 0:
            raise ValueError(f"run.threads must be >= 0 (0: PyTorch's default), got {self.threads}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"run.precision={self.precision!r}; choose auto, fp32, bf16 or fp16")


@dataclass
class LoopConfig:
    """Length of training and what happens in each optimizer step (the same keys in every task)."""

    steps: int = field(default=1000, metadata={"help": "optimizer steps in total"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this; 0 = off"})

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if self.grad_accum < 1:
            raise ValueError(f"train.grad_accum must be >= 1, got {self.grad_accum}")
        if self.grad_clip < 0:
            raise ValueError(f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> Any: ...


# Keys whose change between runs of one run directory is harmless (where to write, how often to log).
# (train.steps is not among them: it stretches a cosine or linear LR schedule, so it is warned about.)
FREE_KEYS = ("run.dir", "run.log_every", "run.tensorboard", "run.threads", "ckpt.")


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix if prefix.endswith(".") else prefix + ".")


def check_resume_config(
    saved: dict, current: dict, shape_keys: Sequence[str], free_keys: Sequence[str] = ()
) -> list[tuple[str, Any, Any]]:
    """Compare the config a checkpoint was written with to the current one.

    A change under any of ``shape_keys`` (e.g. ``"model"``) would not fit the saved tensors or the saved data
    position: refused with a message naming each change. Other changes are allowed with a warning; the
    bookkeeping keys (``FREE_KEYS`` and ``free_keys``) pass silently.
    """
    diffs = config_diff(saved, current)
    shape = [d for d in diffs if any(_under(d[0], k) for k in shape_keys)]
    if shape:
        lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in shape)
        raise ConfigError(
            f"cannot resume: the config changed since the checkpoint in a way the saved state cannot follow "
            f"({lines}); restore those values, or start a new --run.dir"
        )
    free = tuple(FREE_KEYS) + tuple(free_keys)
    rest = [d for d in diffs if not any(_under(d[0], k) for k in free)]
    for k, a, b in rest:
        warnings.warn(f"resuming with a changed config: {k}: {a!r} -> {b!r}", stacklevel=2)
    return rest


def _resolve(value: str) -> str:
    return str(Path(os.path.expanduser(value)).resolve()) if value else value


def resolved_config(cfg: Any) -> dict:
    """``config_to_dict(cfg)`` with every :func:`path_field` resolved to an absolute path."""
    out = config_to_dict(cfg)

    def walk(obj: Any, node: dict) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value) and isinstance(node.get(f.name), dict):
                walk(value, node[f.name])
            elif f.metadata.get("path") and isinstance(value, (str, Path)) and hints.get(f.name) in (str, Path):
                node[f.name] = _resolve(str(value))

    walk(cfg, out)
    return out


def _resolve_like(saved: dict, current_cfg: Any) -> dict:
    """A saved config dict with its path fields resolved (older runs saved them as typed)."""
    saved = json.loads(json.dumps(saved))

    def walk(obj: Any, node: dict) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value) and isinstance(node.get(f.name), dict):
                walk(value, node[f.name])
            elif f.metadata.get("path") and isinstance(node.get(f.name), str):
                node[f.name] = _resolve(node[f.name])

    walk(current_cfg, saved)
    return saved


def check_run_dir(run_dir: Path, task: str, resume: str) -> bool:
    """Whether ``run_dir`` exists and is one of ours; raises ``RunDirError`` for a folder we must not touch.

    Writes nothing: refused for a file, a non-empty folder without our marker, a folder of another task, or a
    folder with checkpoints when ``resume`` is ``never`` (continuing would overwrite them).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run dir {run_dir} is a file; pass --run.dir with a folder path")
    if not run_dir.is_dir():
        return False
    marker = run_dir / RUN_MARKER
    if not marker.exists():
        if any(run_dir.iterdir()):
            raise RunDirError(
                f"run dir {run_dir} exists, is not empty and was not created by genai-train (no {RUN_MARKER}); "
                f"choose a new --run.dir so nothing in it is overwritten"
            )
        return False
    try:
        owner = json.loads(marker.read_text()).get("task")
    except (OSError, json.JSONDecodeError):
        owner = None
    if owner and owner != task:
        raise RunDirError(f"run dir {run_dir} belongs to a '{owner}' run, not '{task}'; choose another --run.dir")
    if resume == "never" and Checkpointer(run_dir / "ckpt").complete_steps():
        raise RunDirError(
            f"run dir {run_dir} already holds checkpoints and ckpt.resume=never; use --ckpt.resume=auto to "
            f"continue it or choose a new --run.dir"
        )
    return True


class Run:
    """One training run: directory, config, logger, checkpoints, process group. See the module docstring.

    ``config`` is the task's config dataclass with ``run`` (:class:`RunConfig`) and ``ckpt`` sections.
    ``shape_keys`` name the config keys a resume cannot change (model sizes, data that fixes the saved data
    position); ``free_keys`` more keys that may change without a warning.
    """

    def __init__(
        self,
        task: str,
        config: Any,
        shape_keys: Sequence[str] = ("model",),
        free_keys: Sequence[str] = (),
        dist: DistInfo | None = None,
        seed: bool = True,
    ):
        self.task, self.config = task, config
        self.cfg: RunConfig = config.run
        ckpt_cfg = config.ckpt
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.dist = dist or init_distributed(select_device(self.cfg.device))
        self.device, self.is_main = self.dist.device, self.dist.is_main
        self.dir = Path(self.cfg.dir)
        self.every = ckpt_cfg.every
        # -- checks that can refuse the run: nothing is written before they pass ------------------------
        existed = check_run_dir(self.dir, task, ckpt_cfg.resume)
        self.checkpointer = Checkpointer(self.dir / "ckpt", keep=ckpt_cfg.keep, task=task, enabled=self.is_main)
        self.config_dict = resolved_config(config)
        self._state: dict | None = None
        self.resumed_from: int | None = None
        if existed and ckpt_cfg.resume == "auto":
            found = self.checkpointer.load_latest(map_location=self.device)
            if found is not None:
                step, state = found
                if "config" in state:
                    check_resume_config(_resolve_like(state["config"], config), self.config_dict, shape_keys, free_keys)
                self.resumed_from, self._state = step, state
        self._logger: RunLogger | None = None
        if seed:
            seed_everything(self.cfg.seed)

    def _commit(self) -> None:
        """The run is accepted: rank 0 creates the folder, marks it ours, writes config.yaml; the logger opens."""
        if self._logger is not None:
            return
        barrier()  # every rank has accepted the resume before rank 0 writes
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not (self.dir / RUN_MARKER).exists():
                (self.dir / RUN_MARKER).write_text(json.dumps({"task": self.task}))
            save_config(self.config_dict, self.dir)
        self._logger = RunLogger(self.dir, enabled=self.is_main, tensorboard=self.cfg.tensorboard)

    @property
    def logger(self) -> RunLogger:
        """The run's logger; the first use accepts the run (writes the folder and config.yaml)."""
        self._commit()
        return self._logger

    # -- precision -----------------------------------------------------------------------------------------
    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of this run on its device (``genai_train.device.autocast``), None for fp32: bf16 when
        asked for on CUDA or the CPU or by ``auto`` on CUDA; fp16 on CUDA (with a gradient scaler)."""
        p, kind = self.cfg.precision, self.device.type
        if (p == "bf16" and kind in ("cuda", "cpu")) or (p == "auto" and kind == "cuda"):
            return torch.bfloat16
        return torch.float16 if p == "fp16" and kind == "cuda" else None

    @property
    def use_autocast(self) -> bool:
        return self.autocast_dtype is not None

    def precision_line(self) -> str:
        """What run.precision does on this device, for a run's first lines (nothing is ignored silently)."""
        p, kind, dtype = self.cfg.precision, self.device.type, self.autocast_dtype
        if dtype is not None:
            scaler = " with a gradient scaler" if dtype == torch.float16 else ""
            name = "fp16" if dtype == torch.float16 else "bf16"
            return f"precision: {name} autocast{scaler} on {kind} (run.precision={p})"
        if p in ("bf16", "fp16"):
            where = "cuda and cpu" if p == "bf16" else "cuda"
            return f"precision: fp32; run.precision={p} is ignored on {kind} ({p} autocast runs on {where})"
        return f"precision: fp32 on {kind} (run.precision={p}; bf16 autocast: run.precision=bf16)"

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> dict | None:
        """The checkpoint being resumed (raw), for trainers that size their objects from it; else None."""
        return self._state

    def restore(self, **objects: Stateful) -> int:
        """Load each named object (and every RNG) from the checkpoint being resumed, then accept the run (the
        folder and config.yaml are written only now); returns the checkpoint's step, 0 for a new run.

        An object that does not fit its saved state refuses the resume with a message, nothing written."""
        if self._state is None:
            self._commit()
            return 0
        missing = [k for k in objects if k not in self._state]
        if missing:
            raise ConfigError(
                f"cannot resume from {self.checkpointer.dir}: the checkpoint has no {', '.join(missing)} "
                f"(it was written with another setting); start a new --run.dir"
            )
        for name, obj in objects.items():
            try:
                obj.load_state_dict(self._state[name])
            except (RuntimeError, ValueError, KeyError, IndexError) as e:
                raise ConfigError(
                    f"cannot resume from {self.checkpointer.dir}: the saved {name} does not fit the current "
                    f"config ({type(e).__name__}: {str(e).splitlines()[0][:300]}); restore the settings it was "
                    f"written with, or start a new --run.dir"
                ) from e
        set_rng_state(self._state["rng"])
        step = int(self._state["step"])
        self._state = None  # free the memory
        self._commit()
        self.info(f"resumed from {self.checkpointer.dir / f'step_{step:09d}'} (step {step})")
        return step

    def save(self, step: int, **objects: Stateful) -> Path | None:
        """Write one atomic checkpoint of every named object, the RNGs and the config (rank 0); all ranks wait."""
        state = {"step": step, "rng": rng_state(), "config": self.config_dict}
        state.update({name: obj.state_dict() for name, obj in objects.items()})
        path = self.checkpointer.save(step, state)
        barrier()
        return path

    def maybe_save(self, step: int, total: int, **objects: Stateful) -> Path | None:
        """Save on every ``ckpt.every``-th step and at the last one."""
        if (self.every > 0 and step % self.every == 0) or step == total:
            return self.save(step, **objects)
        return None

    # -- logging ---------------------------------------------------------------------------------------------
    def should_log(self, step: int, total: int) -> bool:
        return step % self.cfg.log_every == 0 or step == total

    def log(self, step: int, **scalars: float) -> dict:
        return self.logger.log(step, **scalars)

    def info(self, msg: str) -> None:
        """A message line for the user (stderr, rank 0); writes nothing to the run folder."""
        if self.is_main:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stderr)

    def close(self) -> None:
        if self._logger is not None:
            self._logger.close()


class Value:
    """A plain value (a counter, a list) as a named stateful object: ``run.restore(phase=Value("ligo"))``."""

    def __init__(self, value: Any = None):
        self.value = value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


__all__ += ["Value", "FREE_KEYS"]
