"""Growth targets are checked against the family's rules and transformers' config validation before any run
directory is written; each failure names the rule and a valid choice."""

import pytest
import torch

from genai_train.config import load_config
from growth.hf import save_hf_folder, validate_hf_config
from growth.models import ModelConfig, Transformer
from growth.targets import TargetError, target_config
from growth.train import GrowConfig, run

LLAMA = ModelConfig(arch="llama", vocab_size=257, n_layers=1, d_model=24, n_heads=3, n_kv_heads=1, d_ff=32)
GPT = ModelConfig(vocab_size=257, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_seq_len=32)
BERT = ModelConfig(arch="bert", vocab_size=257, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_seq_len=32)


def _folder(tmp_path, cfg, name):
    torch.manual_seed(0)
    return save_hf_folder(Transformer(cfg), cfg, tmp_path / name)


@pytest.mark.parametrize(
    "src, target, extra, match",
    [
        (LLAMA, "d_model=40", [], r"rule 'kv_heads divide heads'.*nearest valid d_model=39 \(heads=3, kv_heads=1\)"),
        (LLAMA, "d_model=48,heads=6,kv_heads=3", [], r"heads/kv_heads must stay 3.*pass kv_heads=2"),
        (LLAMA, "head_dim=16", [], r"rule 'head size'.*keeps head_dim=8"),
        (GPT, "d_model=40,heads=7", [], r"heads=7 does not divide d_model=40.*nearest valid d_model=40 \(heads=5\)"),
        (GPT, "positions=16", [], r"positions=16 is smaller than the source's 32.*pass positions >= 32"),
        (GPT, "positions=48", ["--data.seq_len=64"], r"rule 'positions'.*pass positions=64"),
        (GPT, "d_model=8", [], r"d_model=8 is smaller than the source's 16"),
        (BERT, "layers=2", ["--arch=llama"], r"--arch=llama conflicts with .* a bert checkpoint.*--arch=bert"),
        (BERT, "layers=2", ["--arch=gpt2"], r"--arch=gpt2 conflicts"),
    ],
)
def test_bad_target_fails_before_the_run_directory_naming_rule_and_valid_choice(
    corpus, tmp_path, src, target, extra, match
):
    small = _folder(tmp_path, src, "small")
    args = [f"--small={small}", f"--target={target}", f"--data.root={corpus}", f"--run.dir={tmp_path / 'r'}"]
    with pytest.raises(TargetError, match=match):
        run(load_config(GrowConfig, None, [*args, "--data.seq_len=16", *extra]))
    assert not (tmp_path / "r").exists()


def test_smollm2_like_width_is_refused_with_the_nearest_valid_d_model():
    """The issue's case: SmolLM2 (9 heads of 64, 3 kv heads) to d_model=700."""
    src = ModelConfig(arch="llama", vocab_size=100, n_layers=2, d_model=576, n_heads=9, n_kv_heads=3, d_ff=64)
    with pytest.raises(TargetError, match=r"heads=9 does not divide d_model=700.*nearest valid d_model=702"):
        target_config(src, "layers=3,d_model=700")
    tgt = target_config(src, "d_model=768")  # width as heads: 12 heads of 64, groups of 3 kept
    assert (tgt.n_heads, tgt.kv_heads, tgt.dh) == (12, 4, 64)


def test_transformers_config_validation_is_applied():
    bad = ModelConfig(arch="llama", vocab_size=50, n_layers=1, d_model=44, n_heads=3, head_dim=8, d_ff=32)
    with pytest.raises(TargetError, match=r"rule 'transformers config'.*hidden size \(44\) is not a multiple"):
        validate_hf_config(bad)
    validate_hf_config(target_config(GPT, "d_model=32,heads=4"))


def test_positions_follow_the_training_windows():
    assert target_config(GPT, "layers=2", seq_len=64).max_seq_len == 64
    assert target_config(GPT, "layers=2", seq_len=16).max_seq_len == 32  # never shrinks
    assert target_config(GPT, "positions=128", seq_len=64).max_seq_len == 128
