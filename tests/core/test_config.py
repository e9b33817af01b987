"""Configs: strict keys, number parsing, clear errors, and every shipped YAML loads."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from genai_train.config import ConfigError, load_config, save_config
from genai_train.lm import LMConfig

ROOT = Path(__file__).resolve().parents[2]
YAMLS = sorted((ROOT / "configs").rglob("*.yaml"))


def _config_class(path: Path) -> type:
    first = path.read_text().splitlines()[0]
    m = re.match(r"#\s*config:\s*([\w.]+):(\w+)", first)
    assert m, f"{path} must start with '# config: package.module:ClassName'"
    return getattr(importlib.import_module(m.group(1)), m.group(2))


def test_configs_folder_is_not_empty():
    assert YAMLS, "configs/ holds no YAML files"


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(ROOT)) for p in YAMLS])
def test_every_shipped_yaml_loads(path):
    cls = _config_class(path)
    cfg = load_config(cls, path)
    assert isinstance(cfg, cls)


def test_unknown_key_in_yaml_fails_with_closest_match(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1e-3\n  weight_decy: 0.1\n")
    with pytest.raises(ConfigError, match=r"weight_decy.*did you mean 'weight_decay'"):
        load_config(LMConfig, p)


def test_unknown_section_and_override_fail(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optimizer:\n  lr: 1e-3\n")
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        load_config(LMConfig, p)
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load_config(LMConfig, None, ["--train.step=5"])


def test_scientific_notation_is_a_float_in_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 3e-4\n")  # YAML 1.1 would read this as a string
    cfg = load_config(LMConfig, p, ["--optim.weight_decay=1e-2"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == pytest.approx(1e-2)


def test_overrides_beat_the_file_which_beats_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 7\n  grad_accum: 2\n")
    cfg = load_config(LMConfig, p, ["--train.steps=9"])
    assert (cfg.train.steps, cfg.train.grad_accum, cfg.train.grad_clip) == (9, 2, 1.0)


def test_wrong_type_and_bad_values_are_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: many\n")
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(LMConfig, p)
    with pytest.raises(ConfigError, match="n_heads"):
        load_config(LMConfig, None, ["--model.d_model=30", "--model.n_heads=4"])


def test_missing_and_malformed_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(LMConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(LMConfig, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(LMConfig, scalar)


def test_resolved_config_round_trips_through_the_run_dir(tmp_path):
    cfg = load_config(LMConfig, None, ["--optim.lr=2e-4", "--run.dir=x"])
    path = save_config(cfg, tmp_path)
    assert load_config(LMConfig, path) == cfg


def test_partial_section_keeps_the_task_defaults_of_that_section(tmp_path):
    # LMConfig's own defaults: train.steps=200 and schedule.warmup_steps=20 (not the section classes' 1000 / 0)
    cfg = load_config(LMConfig, None, ["--train.grad_accum=2", "--schedule.kind=linear"])
    assert (cfg.train.steps, cfg.train.grad_accum) == (200, 2)
    assert (cfg.schedule.warmup_steps, cfg.schedule.kind) == (20, "linear")
    p = tmp_path / "c.yaml"
    p.write_text("run:\n  seed: 5\n")
    assert load_config(LMConfig, p).run.dir == "runs/lm"
