"""The engine with the core's low-rank optimizers: per-layer updates inside backward equal ordinary steps."""

from __future__ import annotations

import pytest
import torch

from genai_train.config import ConfigError
from genai_train.lm import build_trainer

from .lm_helpers import params, tiny_cfg


def _trained(run_dir, name: str, per_layer: bool, grad_accum: int):
    cfg = tiny_cfg(run_dir, steps=4, every=0, grad_accum=grad_accum, ema=False)
    cfg.optim.name, cfg.optim.rank, cfg.optim.per_layer, cfg.optim.update_proj_gap = name, 4, per_layer, 2
    cfg.train.grad_clip = 0.0
    trainer, _ = build_trainer(cfg)
    trainer.fit()
    trainer.close()
    return trainer


@pytest.mark.parametrize("name", ["galore", "apollo_mini"])
def test_per_layer_mode_with_accumulation_equals_ordinary_steps(tmp_path, name):
    plain = _trained(tmp_path / "plain", name, per_layer=False, grad_accum=2)
    inside = _trained(tmp_path / "inside", name, per_layer=True, grad_accum=2)
    assert inside.per_layer and not plain.per_layer
    a, b = params(plain.model), params(inside.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_per_layer_mode_refuses_gradient_clipping(tmp_path):
    cfg = tiny_cfg(tmp_path / "r", steps=2)
    cfg.optim.name, cfg.optim.per_layer = "galore", True
    with pytest.raises(ConfigError, match="train.grad_clip=0"):
        build_trainer(cfg)
