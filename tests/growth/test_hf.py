"""Hugging Face-format folders: what we write loads in transformers with the same logits, and back."""

import json
import os

import pytest
import torch

from growth.hf import CheckpointFolderError, load_hf_folder, save_hf_folder
from growth.ligo import LigoConfig, LigoOperator, materialize
from growth.models import ModelConfig, Transformer
from growth.targets import target_config

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIGS = {
    "gpt2": dict(arch="gpt2"),
    "gpt2_untied": dict(arch="gpt2", tie_embeddings=False),
    "bert": dict(arch="bert", norm_eps=1e-12),
    "llama_gqa": dict(arch="llama", n_kv_heads=2),
}


def _auto(arch):
    return transformers.AutoModelForMaskedLM if arch == "bert" else transformers.AutoModelForCausalLM


def _perturbed(cfg: ModelConfig, seed=0) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.mark.parametrize("name", list(CONFIGS))
def test_grown_checkpoint_we_write_loads_in_transformers_with_same_logits(name, tmp_path):
    src = ModelConfig(vocab_size=50, n_layers=2, d_model=16, n_heads=4, d_ff=32, max_seq_len=16, **CONFIGS[name])
    small = _perturbed(src)
    tgt = target_config(src, "layers=3,d_model=32,heads=8,ffn=48")
    big = materialize(LigoOperator(small.state_dict(), src, tgt, LigoConfig(noise=0.02))).eval()
    save_hf_folder(big, tgt, tmp_path)
    hf = _auto(tgt.arch).from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, big(ids), rtol=1e-4, atol=1e-4)
    cfg2, sd2, notes = load_hf_folder(tmp_path)  # and our reader gets the very same model back
    m2 = Transformer(cfg2).eval()
    m2.load_state_dict(sd2)
    with torch.no_grad():
        assert torch.equal(m2(ids), big(ids))


def test_reader_matches_transformers_reference_models(tmp_path):
    ids = torch.randint(0, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    refs = {
        "gpt2": transformers.GPT2LMHeadModel(
            transformers.GPT2Config(vocab_size=60, n_positions=16, n_embd=24, n_layer=2, n_head=3)
        ),
        "bert": transformers.BertForMaskedLM(
            transformers.BertConfig(
                vocab_size=60,
                hidden_size=24,
                num_hidden_layers=2,
                num_attention_heads=3,
                intermediate_size=40,
                max_position_embeddings=16,
            )
        ),
        "llama": transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=60,
                hidden_size=24,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=40,
                max_position_embeddings=16,
            )
        ),
    }
    for name, ref in refs.items():
        torch.manual_seed(0)
        ref.eval()
        ref.save_pretrained(tmp_path / name)
        cfg, sd, _ = load_hf_folder(tmp_path / name)
        ours = Transformer(cfg).eval()
        ours.load_state_dict(sd)
        with torch.no_grad():
            torch.testing.assert_close(ours(ids), ref(ids).logits, rtol=1e-4, atol=1e-4, msg=name)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointFolderError, match="does not exist"):
        load_hf_folder(tmp_path / "nope")
    with pytest.raises(CheckpointFolderError, match="config.json is missing"):
        load_hf_folder(tmp_path)
    cfg = ModelConfig(vocab_size=20, n_layers=1, d_model=8, n_heads=2, d_ff=16, max_seq_len=8)
    save_hf_folder(Transformer(cfg), cfg, tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").unlink()
    with pytest.raises(CheckpointFolderError, match="no weights found.*model.safetensors"):
        load_hf_folder(tmp_path / "ok")


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(
        CheckpointFolderError, match="'t5' is not supported; supported architectures: gpt2, bert, llama"
    ):
        load_hf_folder(tmp_path)
