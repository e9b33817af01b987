"""Every optimizer inside the trainers that exist: the byte-level LM on the shared engine."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from genai_train.checkpoint import CheckpointConfig
from genai_train.engine import EMAConfig, LoopConfig, RunConfig
from genai_train.lm import GPTConfig, LMConfig, TextDataConfig, build_trainer
from genai_train.optim import CoreOptimizer, OptimConfig

METHODS = ["galore", "apollo", "apollo_mini", "adam_mini", "flora"]


class _Stop(Exception):
    pass


def _cfg(run_dir, name: str) -> LMConfig:
    optim = OptimConfig(
        name=name,
        lr=3e-3,
        weight_decay=0.1,
        update_proj_gap=2,
        kappa=2,
        rank=None if name in ("apollo_mini", "adam_mini") else 4,
    )
    return LMConfig(
        run=RunConfig(dir=str(run_dir), device="cpu", seed=3, log_every=1, tensorboard=False),
        model=GPTConfig(n_layers=2, d_model=32, n_heads=2, seq_len=16),
        data=TextDataConfig(batch_size=4),
        train=LoopConfig(steps=5, grad_accum=1, grad_clip=1.0),
        optim=optim,
        ckpt=CheckpointConfig(every=2, keep=2),
        ema=EMAConfig(),
    )


def _run(cfg, stop_at: int | None = None):
    def cb(trainer, step):
        if step == stop_at:
            raise _Stop

    trainer, _ = build_trainer(cfg, callbacks=[cb])
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


@pytest.mark.parametrize("name", METHODS)
def test_lm_trainer_runs_and_resumes_with_every_optimizer(tmp_path, name):
    straight = _run(_cfg(tmp_path / "a", name))
    assert isinstance(straight.optimizer, CoreOptimizer)
    assert any(g.get("low_rank") for g in straight.optimizer.param_groups) == (name != "adam_mini")
    assert "optimizer state" in straight.memory_line()
    with pytest.raises(_Stop):
        _run(_cfg(tmp_path / "b", name), stop_at=3)
    resumed = _run(_cfg(tmp_path / "b", name))
    assert resumed.resumed_from == 2
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.isfinite(a).all() and torch.equal(a, b), k


def test_lm_trainer_accepts_per_layer_mode(tmp_path):
    cfg = _cfg(tmp_path / "p", "galore")
    cfg = replace(cfg, optim=replace(cfg.optim, per_layer=True), train=replace(cfg.train, grad_clip=0.0))
    trainer = _run(cfg)
    assert trainer.optimizer.per_layer and trainer.step == 5
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
