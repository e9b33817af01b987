"""Growth runs: load a small checkpoint, grow it (LiGO / stacking + Net2Net / scratch), keep training.

Phases, counted in optimizer steps on one global step counter:

1. ``ligo`` (``ligo.steps``): the large model runs with weights computed from the operator on the fly
   (``torch.func.functional_call``); only the operator's parameters are trained (``ligo.optim``), with the
   large model's own loss on the same data.
2. ``train`` (``train.steps``): the weights are materialized once, the operator is dropped and the large
   model trains normally with ``optim`` (any optimizer of ``genai_train.optim``) and ``schedule``.

The run directory, config check, resume, logging and rank-0 writing are the core's (:class:`genai_train.run.Run`);
the phase, the operator or the model, optimizer + scheduler, data position and the cumulative FLOPs and
wall-clock are the stateful objects handed to it. Under torchrun every rank draws its own slice of the global
batch and the gradients (of the operator, then of the model) are averaged over ranks.

The config dataclasses (:class:`GrowConfig` and its sections) live in :mod:`growth.config`, re-exported here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch.func import functional_call

from genai_train.data import ShardedBatchSampler
from genai_train.device import autocast
from genai_train.distributed import DistInfo, all_reduce_mean
from genai_train.optim import build_optimizer, optimizer_state_bytes, param_bytes
from genai_train.run import Run, Value
from genai_train.schedules import ScheduleConfig, build_scheduler
from growth.baselines import stack_config
from growth.config import SHAPE_KEYS, EvalConfig, GrowConfig, GrowScheduleConfig
from growth.data import ByteTokenizer, TextData, byte_tokenizer_fast, load_tokenizer, mlm_mask
from growth.hf import load_hf_folder, save_hf_folder, validate_hf_config
from growth.ligo import LigoConfig, LigoOperator, materialize, operator_optimizer
from growth.models import ModelConfig, Transformer, forward_flops_per_token
from growth.targets import TargetError, check_target, parse_target, target_config

__all__ = [
    "GrowConfig",
    "EvalConfig",
    "GrowScheduleConfig",
    "GrowTrainer",
    "run",
    "build_target",
    "grow_folder",
    "SHAPE_KEYS",
]

TASK = "grow"


def build_target(cfg: GrowConfig, src: ModelConfig | None, vocab_size: int) -> ModelConfig:
    """The large model's config from the source (growth) or from the target string alone (scratch), checked
    against the family's rules and transformers' own config validation before anything is written."""
    if src is not None:
        if cfg.arch not in ("auto", src.arch):
            raise TargetError(
                f"--arch={cfg.arch} conflicts with {cfg.small}, a {src.arch} checkpoint: growth keeps the source's "
                f"family; drop --arch (auto) or pass --arch={src.arch}"
            )
        tgt = target_config(src, cfg.target, seq_len=cfg.data.seq_len)
        validate_hf_config(tgt)
        return tgt
    sizes = parse_target(cfg.target)
    arch = "gpt2" if cfg.arch == "auto" else cfg.arch
    if arch == "vit":
        raise TargetError(
            "vit from scratch needs image data, which growth does not train on; see growth.train.grow_folder"
        )
    sizes.setdefault("max_seq_len", cfg.data.seq_len)
    try:
        tgt = ModelConfig(arch=arch, vocab_size=vocab_size, tie_embeddings=arch != "llama", **sizes)
    except ValueError as e:
        raise TargetError(f"target rule: {e}") from None
    check_target(tgt, tgt, cfg.data.seq_len)
    validate_hf_config(tgt)
    return tgt


def grow_folder(
    small: str | Path, target: str, out: str | Path, ligo: LigoConfig | None = None, seed: int = 0
) -> ModelConfig:
    """Grow a checkpoint folder without training (the operator's function-preserving init, materialized) and
    write the grown folder with everything the source had. The way to grow a ViT: image training data is not
    supported by ``genai-train grow``."""
    src, small_sd, _ = load_hf_folder(small)
    tgt = target_config(src, target)
    validate_hf_config(tgt)
    model = materialize(LigoOperator(small_sd, src, tgt, ligo or LigoConfig(), seed=seed))
    save_hf_folder(model, tgt, out, source=small)
    return tgt


def mask_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (run seed, step, micro-batch, sample position)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


class GrowTrainer:
    """One growth run; ``step()`` advances one optimizer step, ``fit()`` runs to the end with checkpoints."""

    def __init__(self, cfg: GrowConfig, dist: DistInfo | None = None):
        # -- validate every input before the run directory is touched ------------------------------------
        cfg.check_inputs()
        self.cfg = cfg
        src, small, notes = load_hf_folder(cfg.small) if cfg.small else (None, None, [])
        if src is not None and src.arch == "vit":
            build_target(cfg, src, src.vocab_size)  # a bad target or --arch is still named first
            raise ValueError(
                f"{cfg.small} is a vit (image) checkpoint: genai-train grow trains on text only; grow it without "
                f"training with growth.train.grow_folder(small, target, out) (operator init, materialized, written "
                f"as a ViTForImageClassification folder)"
            )
        self.data = TextData(cfg.data, load_tokenizer(cfg.small or None, cfg.data.tokenizer))
        if src is not None and self.data.vocab_size > src.vocab_size:
            raise ValueError(
                f"the tokenizer has {self.data.vocab_size} ids but {cfg.small} has a vocabulary of "
                f"{src.vocab_size}; use the checkpoint's own tokenizer (data.tokenizer=auto)"
            )
        self.src, self.tgt = src, build_target(cfg, src, self.data.vocab_size)
        self.schedule = cfg.schedule.resolved(cfg.train.steps)
        if not self.tgt.rope and cfg.data.seq_len > self.tgt.max_seq_len:
            raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds the model's {self.tgt.max_seq_len} positions")
        if self.tgt.objective == "mlm" and self.data.mask_token_id is None:
            raise ValueError("an MLM (bert) model needs a tokenizer with a mask token")
        # -- the run: checks the directory and the saved config, then writes ---------------------------------
        self.run = Run(TASK, cfg, shape_keys=SHAPE_KEYS, free_keys=("eval.", "export"), dist=dist)
        self.device, self.dist = self.run.device, self.run.dist  # (run.logger opens once the resume is accepted)
        for n in notes:
            self.run.info(f"note: {n}")
        self.run.info(self.run.precision_line())
        torch.manual_seed(cfg.run.seed)
        self.model = Transformer(self.tgt).to(self.device)
        self.op: LigoOperator | None = None
        self.ligo_steps = cfg.ligo.steps if cfg.method == "ligo" else 0
        if cfg.method in ("ligo", "stack"):
            init = cfg.ligo if cfg.method == "ligo" else stack_config(cfg.ligo)
            op = LigoOperator(small, src, self.tgt, init, seed=cfg.run.seed).to(self.device)
            if self.ligo_steps > 0:
                self.op = op
                self.model.requires_grad_(False)
            else:
                materialize(op, self.model)
        saved = (self.run.checkpoint or {}).get("phase")
        self.phase = Value("ligo" if self.op is not None else "train")
        if (saved.get("value") if isinstance(saved, dict) else saved) == "train":
            self.op, self.phase.value = None, "train"  # resumed after the operator phase: the model is saved
        self.total_steps = self.ligo_steps + cfg.train.steps
        self.sampler = ShardedBatchSampler(
            self.data.n_train_windows,
            cfg.data.batch_size,
            seed=cfg.run.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.totals = Value({"flops": 0.0, "wall": 0.0})  # cumulative training FLOPs (all ranks) and seconds
        tokens = cfg.data.batch_size * self.dist.world_size * cfg.data.seq_len * cfg.train.grad_accum
        self.step_flops = 3.0 * forward_flops_per_token(self.tgt, cfg.data.seq_len) * tokens
        self.op_step_flops = 3.0 * self.op.grow_flops() * cfg.train.grad_accum if self.op is not None else 0.0
        self._val = self.data.val_batches()
        self._build_optimizer()
        self.step_count = self.run.restore(**self._stateful())

    # -- state -----------------------------------------------------------------------------------------
    @property
    def flops(self) -> float:
        return self.totals.value["flops"]

    @property
    def wall(self) -> float:
        return self.totals.value["wall"]

    def _stateful(self) -> dict:
        weights = {"operator": self.op} if self.op is not None else {"model": self.model}
        return dict(
            phase=self.phase, **weights, optimizer=self.opt, scheduler=self.sched, data=self.sampler, totals=self.totals
        )

    def _build_optimizer(self) -> None:
        """The optimizer, LR schedule and trained parameters of the current phase."""
        cfg = self.cfg
        if self.op is not None:
            self.opt = operator_optimizer(self.op, cfg.ligo)
            sched = ScheduleConfig(kind="constant", warmup_steps=cfg.ligo.resolved_warmup)
            self.sched = build_scheduler(self.opt, sched, self.ligo_steps)
            self.params = [p for p in self.op.parameters() if p.requires_grad]
            self.clip = cfg.ligo.grad_clip
        else:
            self.model.requires_grad_(True)
            self.opt = build_optimizer(self.model.named_parameters(), cfg.optim, model=self.model)
            self.sched = build_scheduler(self.opt, self.schedule, cfg.train.steps)
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
        self.run.info(
            f"[{self.phase.value}] memory: params {self.memory['param_bytes'] / 2**20:.2f} MiB "
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
        self, batch: torch.Tensor, params: dict[str, torch.Tensor] | None, key: tuple[int, ...], reduce: bool = False
    ) -> torch.Tensor:
        """Next-token cross-entropy (decoders) or masked-LM cross-entropy (encoders) of [B, T+1] windows.

        MLM masks are drawn per sample from ``key`` + the sample's position in the global batch, and with
        ``reduce`` the loss is normalised by the masked-token count of the global batch, so ranks that average
        their gradients compute exactly the gradient of one process holding the whole batch.
        """
        with autocast(self.device, self.run.use_autocast):
            if self.tgt.objective == "clm":
                logits = self._forward(batch[:, :-1], params)  # [B, T, V]
                return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
            ids = batch[:, :-1].cpu()  # [B, T]
            first = self.dist.rank * len(ids) if reduce else 0  # position of row 0 in the global batch
            masked = [
                mlm_mask(
                    row[None],
                    self.data.mask_token_id,
                    self.data.vocab_size,
                    self.cfg.data.mask_prob,
                    mask_generator(*key, first + i),
                )
                for i, row in enumerate(ids)
            ]
            inputs, labels = (torch.cat(t).to(self.device) for t in zip(*masked))
            logits = self._forward(inputs, params)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
            count = (labels != -100).sum().float()
            if reduce and self.dist.enabled:
                torch_dist.all_reduce(count)
                count = count / self.dist.world_size
            return nll / count.clamp(min=1.0)

    def _params(self) -> dict[str, torch.Tensor] | None:
        return self.op.grow() if self.op is not None else None

    def _average_gradients(self) -> None:
        """All-reduce the trained parameters' gradients as one flat buffer and divide by the world size."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not self.dist.enabled or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch_dist.all_reduce(flat)
        flat /= self.dist.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    # -- one step --------------------------------------------------------------------------------------
    def step(self) -> torch.Tensor:
        """One optimizer step of the current phase over ``train.grad_accum`` micro-batches; returns the
        (detached, this rank's) mean training loss."""
        t0 = time.perf_counter()
        accum, losses = self.cfg.train.grad_accum, []
        for micro in range(accum):
            batch = self.data.windows(self.sampler.next_indices()).to(self.device)
            loss = self.loss(batch, self._params(), key=(self.cfg.run.seed, self.step_count, micro), reduce=True)
            (loss / accum).backward()
            losses.append(loss.detach())
        self._average_gradients()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        if self._memory_pending:
            self._log_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.totals.value["flops"] += self.step_flops + (self.op_step_flops if self.op is not None else 0.0)
        self.step_count += 1
        if self.op is not None and self.step_count >= self.ligo_steps:
            self.finish_operator_phase()
        self.totals.value["wall"] += time.perf_counter() - t0
        return torch.stack(losses).mean()

    def finish_operator_phase(self) -> None:
        """Materialize the grown weights once, drop the operator, switch to normal training."""
        materialize(self.op, self.model)
        self.op, self.phase.value = None, "train"
        self._build_optimizer()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over the fixed held-out batches."""
        params = {k: v.detach() for k, v in self.op.grow().items()} if self.op is not None else None
        losses = [self.loss(b.to(self.device), params, key=(10_007, i)).item() for i, b in enumerate(self._val)]
        return sum(losses) / len(losses)

    # -- the whole run -----------------------------------------------------------------------------------
    def _eval_due(self, step: int, phase_before: str) -> bool:
        every = self.cfg.eval.every
        return (every and step % every == 0) or step == self.total_steps or phase_before != self.phase.value

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to ``total_steps`` (or stop after step ``stop_after``, as if interrupted)."""
        cfg, run = self.cfg, self.run
        end = self.total_steps if stop_after is None else min(stop_after, self.total_steps)
        if self.step_count == 0 and end > 0:
            run.log(0, val_loss=self.evaluate(), flops=0.0, wall=0.0)
        bar = run.logger.progress(self.total_steps, initial=self.step_count, desc=f"grow[{cfg.method}]")
        while self.step_count < end:
            phase, lr = self.phase.value, self.opt.param_groups[0]["lr"]  # the LR this step uses
            loss = self.step()
            s = self.step_count
            bar.update(1)
            row = {}
            if run.should_log(s, self.total_steps):  # host sync only on logging steps
                row.update(loss=all_reduce_mean(loss).item(), lr=lr, phase=phase)
            if self._eval_due(s, phase):
                row["val_loss"] = self.evaluate()
            if row:
                run.log(s, **row, flops=self.flops, wall=self.wall)
            if s == end and s < self.total_steps:
                run.save(s, **self._stateful())  # interrupted: keep the exact state
            else:
                run.maybe_save(s, self.total_steps, **self._stateful())
        bar.close()
        summary = {
            "step": self.step_count,
            "phase": self.phase.value,
            "flops": self.flops,
            "wall_s": self.wall,
            "target": {k: getattr(self.tgt, k) for k in ("arch", "n_layers", "d_model", "n_heads", "kv_heads", "d_ff")},
        }
        if self.step_count >= self.total_steps:
            summary["val_loss"] = self.evaluate()
            if cfg.export:
                summary["hf_folder"] = str(run.dir / "hf")
            if self.dist.is_main:
                if cfg.export:
                    save_hf_folder(
                        self.model, self.tgt, run.dir / "hf", source=cfg.small or None, tokenizer=self._tokenizer()
                    )
                (run.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _tokenizer(self):
        """What the grown folder saves as its tokenizer: the byte tokenizer for byte-level models (None: the
        source's tokenizer files are copied)."""
        return byte_tokenizer_fast(self.tgt.arch) if isinstance(self.data.tok, ByteTokenizer) else None

    def close(self) -> None:
        self.run.close()


def run(cfg: GrowConfig, stop_after: int | None = None) -> dict:
    """Entry point of ``genai-train grow``: validate, grow, train, export the grown model (rank 0)."""
    trainer = GrowTrainer(cfg)
    try:
        return trainer.fit(stop_after)
    finally:
        trainer.close()
