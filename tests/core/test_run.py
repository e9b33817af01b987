"""The run lifecycle on the core's own task (lm): validate, then write; paths resolved; tagged-union sections."""

from __future__ import annotations

import shutil
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch

from genai_train.config import ConfigError, config_to_dict, field_help, load_config
from genai_train.lm import DEFAULT_TEXT, build_trainer
from genai_train.testing import path_spellings, tree_hashes

from .lm_helpers import params, tiny_cfg


def _run(cfg):
    trainer, _ = build_trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


def test_refused_resume_leaves_every_file_byte_identical(tmp_path):
    run = tmp_path / "r"
    cfg = tiny_cfg(run, steps=4, every=2)
    cfg.run.tensorboard = True  # a refused run must not add an event file either
    _run(cfg)
    before = tree_hashes(run)
    changed = tiny_cfg(run, steps=8, every=2)
    changed.run.tensorboard = True
    changed.model.d_model = 64
    with pytest.raises(ConfigError, match=r"model.d_model: 32 -> 64"):
        build_trainer(changed)
    assert tree_hashes(run) == before


def test_another_optimizer_is_refused_on_resume_and_writes_nothing(tmp_path):
    run = tmp_path / "r"
    _run(tiny_cfg(run, steps=2, every=1))
    before = tree_hashes(run)
    cfg = tiny_cfg(run, steps=4, every=1)
    cfg.optim.name = "apollo_mini"
    with pytest.raises(ConfigError, match=r"optim.name: 'adamw' -> 'apollo_mini'"):
        build_trainer(cfg)
    assert tree_hashes(run) == before


def test_state_that_does_not_fit_refuses_the_resume_before_anything_is_written(tmp_path):
    from genai_train.run import Run

    run = tmp_path / "r"
    _run(tiny_cfg(run, steps=2, every=1))
    before = tree_hashes(run)

    class Picky:
        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            raise RuntimeError("size mismatch for weight")

    r = Run("lm", tiny_cfg(run, steps=4, every=1))
    with pytest.raises(ConfigError, match=r"the saved model does not fit .*size mismatch for weight"):
        r.restore(model=Picky())
    assert tree_hashes(run) == before


def test_lm_writes_tensorboard_scalars(tmp_path):
    from genai_train.testing import tensorboard_scalars

    cfg = tiny_cfg(tmp_path / "r", steps=3, every=0)
    cfg.run.tensorboard = True
    _run(cfg)
    assert tensorboard_scalars(tmp_path / "r")["loss"] == [1, 2, 3]


def test_missing_data_file_creates_no_run_dir(tmp_path):
    cfg = tiny_cfg(tmp_path / "never", steps=2)
    cfg.data.path = str(tmp_path / "no_such.txt")
    with pytest.raises(ConfigError, match="is not a file"):
        build_trainer(cfg)
    assert not (tmp_path / "never").exists()


def test_data_path_spelled_three_ways_resumes_one_run(tmp_path, monkeypatch):
    text = tmp_path / "data" / "corpus.txt"
    text.parent.mkdir()
    shutil.copy(Path(sysconfig.get_paths()["stdlib"]) / DEFAULT_TEXT, text)
    monkeypatch.chdir(tmp_path)
    straight_cfg = tiny_cfg(tmp_path / "straight", steps=6, every=2, ema=False)
    straight_cfg.data.path = str(text)
    straight = _run(straight_cfg)
    run = tmp_path / "run"
    for steps, spelling in zip((2, 4, 6), path_spellings(text, tmp_path)):
        cfg = tiny_cfg(run, steps=steps, every=2, ema=False)
        cfg.data.path = spelling
        trainer = _run(cfg)
        assert trainer.resumed_from == (steps - 2 if steps > 2 else None), spelling
    a, b = params(straight.model), params(trainer.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "data/corpus.txt" in (run / "config.yaml").read_text()  # saved resolved
    assert str(text.resolve()) in (run / "config.yaml").read_text()


# -- tagged-union sections ---------------------------------------------------------------------------------
@dataclass
class _A:
    name: Literal["a"] = "a"
    shared: int = field(default=1, metadata={"help": "in both"})
    only_a: float = field(default=0.5, metadata={"help": "a's own"})


@dataclass
class _B:
    name: Literal["b"] = "b"
    shared: int = field(default=2, metadata={"help": "in both"})
    only_b: str = field(default="x", metadata={"help": "b's own"})


@dataclass
class _Cfg:
    strategy: _A | _B = field(default_factory=lambda: _A(shared=7))


def test_tagged_union_picks_the_variant_by_name_in_any_flag_order(tmp_path):
    assert load_config(_Cfg).strategy == _A(shared=7)
    cfg = load_config(_Cfg, None, ["--strategy.only_b=y", "--strategy.name=b"])
    assert cfg.strategy == _B(only_b="y")  # b's own defaults, not a's task default for `shared`
    assert load_config(_Cfg, None, ["--strategy.only_a=2"]).strategy == _A(shared=7, only_a=2.0)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("strategy:\n  name: b\n  shared: 3\n")
    assert load_config(_Cfg, yaml_file).strategy == _B(shared=3)
    assert config_to_dict(load_config(_Cfg, yaml_file)) == {"strategy": {"name": "b", "shared": 3, "only_b": "x"}}


def test_tagged_union_errors_name_the_variant(tmp_path):
    with pytest.raises(ConfigError, match=r"strategy.only_b' belongs to strategy.name=b"):
        load_config(_Cfg, None, ["--strategy.only_b=y"])
    with pytest.raises(ConfigError, match=r"'c' is not one of 'a', 'b'"):
        load_config(_Cfg, None, ["--strategy.name=c"])
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("strategy:\n  name: a\n  only_b: z\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'strategy.only_b'"):
        load_config(_Cfg, yaml_file)


def test_help_of_a_tagged_union_lists_only_the_chosen_variant():
    assert set(field_help(_Cfg)) == {"strategy.name", "strategy.shared", "strategy.only_a"}
    assert set(field_help(_Cfg, {"strategy": {"name": "b"}})) == {"strategy.name", "strategy.shared", "strategy.only_b"}


def test_precision_is_reported_and_nothing_is_ignored_silently(tmp_path, capsys):
    for precision, line in [
        ("bf16", "precision: bf16 autocast on cpu (run.precision=bf16)"),
        ("fp16", "precision: fp32; run.precision=fp16 is ignored on cpu (fp16 autocast runs on cuda)"),
        ("auto", "precision: fp32 on cpu (run.precision=auto"),
    ]:
        cfg = tiny_cfg(tmp_path / precision, steps=1, every=0)
        cfg.run.precision = precision
        trainer = _run(cfg)
        assert line in capsys.readouterr().err
        assert (trainer.scaler is None) and trainer.use_autocast == (precision == "bf16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_scales_the_loss_and_resumes_exactly(tmp_path):
    def cfg(run_dir, steps):
        c = tiny_cfg(run_dir, steps=steps, every=2, ema=False)
        c.run.precision, c.run.device = "fp16", "cuda"
        return c

    straight = _run(cfg(tmp_path / "a", 4))
    _run(cfg(tmp_path / "b", 2))
    resumed = _run(cfg(tmp_path / "b", 4))
    assert straight.scaler is not None and resumed.resumed_from == 2
    a, b = params(straight.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a) and all(torch.isfinite(v).all() for v in a.values())
