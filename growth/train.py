"""Growth runs: load a small checkpoint, grow it (LiGO / stacking + Net2Net / scratch), keep training.

Phases, counted in optimizer steps on one global step counter:

1. ``ligo`` (``ligo.steps``): the large model runs with weights computed from the operator on the fly
   (``torch.func.functional_call``); only the operator's parameters are trained, with the large model's
   own loss on the same data.
2. ``train`` (``train.steps``): the weights are materialized once, the operator is dropped and the large
   model trains normally with any optimizer of ``genai_train.optim``.

Checkpoints hold the phase, the operator or the model, optimizer + scheduler state, the data position and
RNG states, so a resumed run reproduces the uninterrupted one exactly. Loss curves go to metrics.jsonl and
TensorBoard; every logged row carries cumulative training FLOPs and wall-clock (evaluation excluded).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.func import functional_call

from genai_train.checkpoint import CheckpointConfig, Checkpointer, prepare_run_dir
from genai_train.config import config_to_dict, save_config
from genai_train.data import ShardedBatchSampler
from genai_train.device import select_device
from genai_train.logging import RunLogger
from genai_train.optim import OptimConfig, build_optimizer, optimizer_state_bytes, param_bytes
from genai_train.schedules import ScheduleConfig, build_scheduler
from genai_train.seed import rng_state, seed_everything, set_rng_state
from growth.data import DataConfig, TextData, load_tokenizer, mlm_mask
from growth.hf import load_hf_folder, save_hf_folder
from growth.ligo import LigoConfig, LigoOperator, materialize
from growth.models import ARCHS, ModelConfig, Transformer, forward_flops_per_token, parse_target, target_config

__all__ = ["GrowConfig", "TrainSection", "RunSection", "GrowTrainer", "run", "build_target"]

TASK = "grow"
_SHAPE_KEYS = (
    "small",
    "target",
    "arch",
    "method",
    "data.seq_len",
    "data.batch_size",
    "ligo.steps",
    "ligo.attn_operator",
)


@dataclass
class TrainSection:
    """Normal training of the (grown) large model."""

    steps: int = field(default=1000, metadata={"help": "optimizer steps after the operator phase"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer (genai_train.optim)"})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={"help": "LR schedule"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm (0: off)"})

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"train.steps={self.steps} must be >= 0")
        if self.grad_clip < 0:
            raise ValueError(f"train.grad_clip={self.grad_clip} must be >= 0")


@dataclass
class RunSection:
    """Where and how the run executes."""

    dir: str = field(default="runs/grow", metadata={"help": "run folder (checkpoints, logs, grown model)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps"})
    seed: int = field(default=0, metadata={"help": "seed of init, operator noise, data order and masks"})
    log_every: int = field(default=10, metadata={"help": "log the training loss every N steps"})
    eval_every: int = field(default=100, metadata={"help": "validation loss every N steps (0: only at the end)"})

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ValueError(f"run.log_every={self.log_every} must be >= 1")
        if self.eval_every < 0:
            raise ValueError(f"run.eval_every={self.eval_every} must be >= 0")


@dataclass
class GrowConfig:
    """``genai-train grow``: grow a small checkpoint into a larger model and keep training it."""

    small: str = field(
        default="",
        metadata={"help": "small model: a Hugging Face-format folder (config.json + weights [+ tokenizer])"},
    )
    target: str = field(
        default="",
        metadata={
            "help": "large model, e.g. 'layers=8,d_model=256,heads=8,ffn=1024' (also kv_heads, head_dim); "
            "unset sizes scale with d_model"
        },
    )
    arch: Literal["gpt2", "bert", "llama"] = field(
        default="gpt2", metadata={"help": "family when no --small is given (method=scratch from nothing)"}
    )
    method: Literal["ligo", "stack", "scratch"] = field(
        default="ligo",
        metadata={"help": "ligo (learned operator) | stack (stacking + Net2Net widening) | scratch (fresh init)"},
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "text data"})
    ligo: LigoConfig = field(default_factory=LigoConfig, metadata={"help": "operator phase"})
    train: TrainSection = field(default_factory=TrainSection, metadata={"help": "normal training"})
    run: RunSection = field(default_factory=RunSection, metadata={"help": "run folder, device, seed"})
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"help": "checkpoints"})
    export: bool = field(default=True, metadata={"help": "write the final model as a HF folder to <run.dir>/hf"})

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r} is not supported; supported: {', '.join(ARCHS)}")
        if self.target:
            parse_target(self.target)

    def check_inputs(self) -> None:
        """Checks that need the whole config: a run needs --small, or a full --target for scratch."""
        if self.method in ("ligo", "stack") and not self.small:
            raise ValueError(
                f"method={self.method} grows a checkpoint: pass --small FOLDER (a Hugging Face-format "
                f"checkpoint); to train a model from nothing use --method=scratch with a full --target"
            )
        if not self.small:
            missing = {"n_layers", "d_model", "n_heads", "d_ff"} - set(parse_target(self.target))
            if missing:
                names = {"n_layers": "layers", "d_model": "d_model", "n_heads": "heads", "d_ff": "ffn"}
                raise ValueError(
                    f"without --small the target must give every size; missing "
                    f"{', '.join(sorted(names[m] for m in missing))} in --target "
                    f"(e.g. 'layers=4,d_model=128,heads=4,ffn=512')"
                )


def build_target(cfg: GrowConfig, src: ModelConfig | None, vocab_size: int) -> ModelConfig:
    """The large model's config from the source (growth) or from the target string alone (scratch)."""
    if src is not None:
        return target_config(src, cfg.target)
    sizes = parse_target(cfg.target)
    return ModelConfig(
        arch=cfg.arch,
        vocab_size=vocab_size,
        max_seq_len=cfg.data.seq_len,
        tie_embeddings=cfg.arch != "llama",
        **sizes,
    )


class GrowTrainer:
    """One growth run; ``step()`` advances one optimizer step, ``fit()`` runs to the end with checkpoints."""

    def __init__(self, cfg: GrowConfig, run_dir: str | Path | None = None, log: bool = True):
        cfg.check_inputs()
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg.run.dir)
        seed_everything(cfg.run.seed)
        self.device = select_device(cfg.run.device)
        self.logger = RunLogger(self.run_dir, enabled=log)
        src, small, notes = load_hf_folder(cfg.small) if cfg.small else (None, None, [])
        for n in notes:
            self.logger.info(f"note: {n}")
        self.data = TextData(cfg.data, load_tokenizer(cfg.small or None, cfg.data.tokenizer))
        if src is not None and self.data.vocab_size > src.vocab_size:
            raise ValueError(
                f"the tokenizer has {self.data.vocab_size} ids but {cfg.small} has a vocabulary of "
                f"{src.vocab_size}; use the checkpoint's own tokenizer (data.tokenizer=auto)"
            )
        self.src = src
        self.tgt = build_target(cfg, src, self.data.vocab_size)
        if not self.tgt.rope and cfg.data.seq_len > self.tgt.max_seq_len:
            raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds the model's {self.tgt.max_seq_len} positions")
        if self.tgt.objective == "mlm" and self.data.mask_token_id is None:
            raise ValueError("an MLM (bert) model needs a tokenizer with a mask token")
        torch.manual_seed(cfg.run.seed)
        self.model = Transformer(self.tgt).to(self.device)
        self.op: LigoOperator | None = None
        grow_with_op = cfg.method in ("ligo", "stack")
        if grow_with_op:
            op = LigoOperator(small, src, self.tgt, cfg.ligo, seed=cfg.run.seed).to(self.device)
            if cfg.method == "ligo" and cfg.ligo.steps > 0:
                self.op = op
                self.model.requires_grad_(False)
            else:
                materialize(op, self.model)
        self.phase: Literal["ligo", "train"] = "ligo" if self.op is not None else "train"
        self.ligo_steps = cfg.ligo.steps if cfg.method == "ligo" else 0
        self.total_steps = self.ligo_steps + cfg.train.steps
        self.sampler = ShardedBatchSampler(self.data.n_train_windows, cfg.data.batch_size, seed=cfg.run.seed)
        self.step_count, self.flops, self.wall = 0, 0.0, 0.0
        tokens = cfg.data.batch_size * cfg.data.seq_len
        self.step_flops = 3.0 * forward_flops_per_token(self.tgt, cfg.data.seq_len) * tokens
        self.op_step_flops = 3.0 * self.op.grow_flops() if self.op is not None else 0.0
        self._val = self.data.val_batches()
        self._build_optimizer()
        self.ckpt = Checkpointer(self.run_dir / "ckpt", keep=cfg.ckpt.keep, task=TASK, enabled=log)
        if cfg.ckpt.resume == "auto":
            latest = self.ckpt.load_latest(map_location=self.device)
            if latest is not None:
                self._restore(latest[1])
                self.logger.info(f"resumed from step {self.step_count} ({self.phase} phase)")

    # -- optimizers per phase --------------------------------------------------------------------------
    def _build_optimizer(self) -> None:
        cfg = self.cfg
        if self.phase == "ligo":
            lc = cfg.ligo
            groups = [
                {"params": [p for p in self.op.width.parameters() if p.requires_grad], "lr": lc.lr},
                {
                    "params": [p for p in self.op.depth.parameters() if p.requires_grad],
                    "lr": lc.depth_lr if lc.depth_lr is not None else lc.lr,
                },
            ]
            self.opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lc.lr, weight_decay=lc.weight_decay)
            sched = ScheduleConfig(kind="constant", warmup_steps=cfg.ligo.resolved_warmup)
            self.sched = build_scheduler(self.opt, sched, self.ligo_steps)
            self.params = [p for p in self.op.parameters() if p.requires_grad]
            self.clip = cfg.ligo.grad_clip
        else:
            self.model.requires_grad_(True)
            self.opt = build_optimizer(self.model.named_parameters(), cfg.train.optim, model=self.model)
            self.sched = build_scheduler(self.opt, cfg.train.schedule, max(1, cfg.train.steps))
            self.params = list(self.model.parameters())
            self.clip = cfg.train.grad_clip
        self._memory_pending = True  # optimizer state exists only after the first step

    def _log_memory(self) -> None:
        """The memory line: parameter bytes (model + operator) and optimizer-state bytes of this phase."""
        op_bytes = param_bytes(self.op) if self.op is not None else 0
        trained = sum(p.numel() for p in self.params)
        self.memory = {
            "param_bytes": param_bytes(self.model) + op_bytes,
            "optimizer_state_bytes": optimizer_state_bytes(self.opt),
            "trainable": trained,
        }
        self.logger.info(
            f"[{self.phase}] memory: params {self.memory['param_bytes'] / 2**20:.2f} MiB "
            f"(model + operator), trainable {trained:,} values, optimizer state "
            f"{self.memory['optimizer_state_bytes'] / 2**20:.2f} MiB"
        )
        self._memory_pending = False

    # -- loss ------------------------------------------------------------------------------------------
    def _forward(self, ids: torch.Tensor, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if params is not None:
            return functional_call(self.model, params, (ids,))
        return self.model(ids)

    def loss(
        self, batch: torch.Tensor, params: dict[str, torch.Tensor] | None = None, mask_seed: int = 0
    ) -> torch.Tensor:
        """Next-token cross-entropy (decoders) or masked-LM cross-entropy (encoders) of [B, T+1] windows."""
        if self.tgt.objective == "clm":
            logits = self._forward(batch[:, :-1], params)  # [B, T, V]
            return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        g = torch.Generator().manual_seed(mask_seed)
        inputs, labels = mlm_mask(
            batch[:, :-1].cpu(), self.data.mask_token_id, self.data.vocab_size, self.cfg.data.mask_prob, g
        )
        logits = self._forward(inputs.to(self.device), params)
        return F.cross_entropy(logits.flatten(0, 1), labels.to(self.device).flatten(), ignore_index=-100)

    def _params(self) -> dict[str, torch.Tensor] | None:
        return self.op.grow() if self.phase == "ligo" else None

    # -- one step --------------------------------------------------------------------------------------
    def step(self) -> torch.Tensor:
        """One optimizer step of the current phase; returns the (detached) training loss."""
        t0 = time.perf_counter()
        batch = self.data.windows(self.sampler.next_indices()).to(self.device)
        loss = self.loss(batch, self._params(), mask_seed=self.cfg.run.seed * 1_000_003 + self.step_count)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.sched.step()
        if self._memory_pending:
            self._log_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.flops += self.step_flops + (self.op_step_flops if self.phase == "ligo" else 0.0)
        self.step_count += 1
        if self.phase == "ligo" and self.step_count >= self.ligo_steps:
            self.finish_operator_phase()
        self.wall += time.perf_counter() - t0
        return loss.detach()

    def finish_operator_phase(self) -> None:
        """Materialize the grown weights once, drop the operator, switch to normal training."""
        materialize(self.op, self.model)
        self.op = None
        self.phase = "train"
        self._build_optimizer()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over the fixed held-out batches."""
        params = {k: v.detach() for k, v in self.op.grow().items()} if self.phase == "ligo" else None
        losses = [self.loss(b.to(self.device), params, mask_seed=10_007 + i).item() for i, b in enumerate(self._val)]
        return sum(losses) / len(losses)

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step_count,
            "phase": self.phase,
            "flops": self.flops,
            "wall": self.wall,
            "operator": self.op.state_dict() if self.op is not None else {},
            "model": self.model.state_dict() if self.phase == "train" else {},
            "optim": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "config": config_to_dict(self.cfg),
        }

    def _restore(self, state: dict) -> None:
        saved = state["config"]
        for key in _SHAPE_KEYS:
            a, b = saved, config_to_dict(self.cfg)
            for part in key.split("."):
                a, b = a.get(part), b.get(part)
            if a != b:
                raise ValueError(
                    f"{self.run_dir}: {key} was {a!r} when the checkpoint was written and is {b!r} "
                    f"now; resume with the same {key} or choose a new --run.dir"
                )
        self.step_count, self.flops, self.wall = state["step"], state["flops"], state["wall"]
        if state["phase"] == "train" and self.phase == "ligo":
            self.op = None
            self.phase = "train"
        if self.phase == "ligo":
            self.op.load_state_dict(state["operator"])
        else:
            self.model.load_state_dict(state["model"])
        self._build_optimizer()
        self.opt.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        self.ckpt.save(self.step_count, self.state_dict())

    # -- the whole run -----------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> dict:
        """Train to ``total_steps`` (or stop after step ``stop_after``, as if interrupted)."""
        cfg = self.cfg
        end = self.total_steps if stop_after is None else min(stop_after, self.total_steps)
        if self.step_count == 0 and end > 0:
            self.logger.log(0, val_loss=self.evaluate(), flops=0.0, wall=0.0)
        bar = self.logger.progress(self.total_steps, initial=self.step_count, desc=f"grow[{cfg.method}]")
        while self.step_count < end:
            phase = self.phase
            loss = self.step()
            s = self.step_count
            bar.update(1)
            row = {}
            if s % cfg.run.log_every == 0 or s == self.total_steps:
                row.update(loss=loss.item(), lr=self.sched.get_last_lr()[0], phase=phase)
            if (
                (cfg.run.eval_every and s % cfg.run.eval_every == 0)
                or s == self.total_steps
                or (phase == "ligo" and self.phase == "train")
            ):
                row["val_loss"] = self.evaluate()
            if row:
                self.logger.log(s, **row, flops=self.flops, wall=self.wall)
            if (cfg.ckpt.every and s % cfg.ckpt.every == 0) or s == end:
                self.save_checkpoint()
        bar.close()
        summary = {
            "step": self.step_count,
            "phase": self.phase,
            "flops": self.flops,
            "wall_s": self.wall,
            "target": {k: getattr(self.tgt, k) for k in ("arch", "n_layers", "d_model", "n_heads", "kv_heads", "d_ff")},
        }
        if self.step_count >= self.total_steps:
            summary["val_loss"] = self.evaluate()
            if cfg.export:
                summary["hf_folder"] = str(
                    save_hf_folder(self.model, self.tgt, self.run_dir / "hf", tokenizer_from=cfg.small or None)
                )
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def close(self) -> None:
        self.logger.close()


def run(cfg: GrowConfig, stop_after: int | None = None) -> dict:
    """Entry point of ``genai-train grow``: prepare the run folder, train, export the grown model."""
    cfg.check_inputs()
    run_dir = prepare_run_dir(cfg.run.dir, TASK, cfg.ckpt.resume)
    save_config(cfg, run_dir)
    trainer = GrowTrainer(cfg, run_dir)
    try:
        return trainer.fit(stop_after)
    finally:
        trainer.close()
