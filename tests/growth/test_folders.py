"""Grown folders carry everything the source had, and peer tools use them as they used the source."""

import json
import os

import pytest
import torch

from genai_train.config import load_config
from growth.train import GrowConfig, run

from .conftest import TEXT

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = [
    "--data.seq_len=16",
    "--data.batch_size=2",
    "--data.val_batches=1",
    "--ligo.steps=1",
    "--ligo.warmup_steps=0",
    "--train.steps=1",
    "--run.device=cpu",
]
CHAT = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _grow(small, corpus, run_dir, target="layers=2,d_model=32,heads=4,ffn=64", *extra):
    out = run(
        load_config(
            GrowConfig,
            None,
            [f"--small={small}", f"--target={target}", f"--data.root={corpus}", f"--run.dir={run_dir}", *TINY, *extra],
        )
    )
    return run_dir / "hf", out


def char_tokenizer(bos="<s>", eos="</s>"):
    """A character-level fast tokenizer over the test corpus (BPE without merges), with a chat template."""
    from tokenizers import Tokenizer, models

    chars = sorted(set(TEXT + "<>abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ!?"))
    vocab = {"<unk>": 0, bos: 1, eos: 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens([bos, eos])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>", chat_template=CHAT
    )


def test_grown_llama_keeps_tokenizer_chat_template_and_generation_config(corpus, tmp_path):
    tok = char_tokenizer()
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    small = tmp_path / "small"
    transformers.LlamaForCausalLM(cfg).save_pretrained(small)
    tok.save_pretrained(small)
    transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, max_new_tokens=7).save_pretrained(small)
    grown, _ = _grow(small, corpus, tmp_path / "r")
    for name in ("tokenizer.json", "generation_config.json"):
        assert (grown / name).exists(), name
    t2 = transformers.AutoTokenizer.from_pretrained(grown)
    assert (t2.bos_token_id, t2.eos_token_id) == (1, 2)
    ids = t2.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0, 0].item() == 1
    model = transformers.AutoModelForCausalLM.from_pretrained(grown)
    assert model.config.hidden_size == 32 and model.generation_config.eos_token_id == 2
    assert model.generation_config.max_new_tokens == 7
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert json.loads((grown / "config.json").read_text())["bos_token_id"] == 1


def test_grown_bert_keeps_pooler_layout_and_dropout(corpus, tmp_path):
    words = sorted(set(TEXT.replace("(", " ").replace(")", " ").replace(":", " ").replace(".", " ").split()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz0123456789,#+="]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    cfg = transformers.BertConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    torch.manual_seed(0)
    small = tmp_path / "small"
    transformers.BertModel(cfg).save_pretrained(small)  # an encoder with a pooler and no MLM head (like MiniLM)
    tok.save_pretrained(small)
    grown, _ = _grow(small, corpus, tmp_path / "r")
    model, info = transformers.AutoModel.from_pretrained(grown, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.hidden_dropout_prob == 0.1 and model.config.attention_probs_dropout_prob == 0.1
    assert model.config.hidden_size == 32
    assert transformers.AutoTokenizer.from_pretrained(grown).get_vocab() == tok.get_vocab()


def test_byte_gpt_tokenizer_round_trips_text(corpus, small_ckpt, tmp_path):
    grown, _ = _grow(small_ckpt, corpus, tmp_path / "r")
    tok = transformers.AutoTokenizer.from_pretrained(grown)
    for text in ("def f(x):", "héllo ✓\n\tx = 1"):
        ids = tok(text)["input_ids"]
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert tok.eos_token_id == 256 and len(tok) == 257


def test_context_extended_gpt_trains_at_the_new_length(corpus, small_ckpt, tmp_path):
    """Source: 32 learned positions; windows of 64 tokens: the table is tiled to 64 rows, then trained."""
    grown, out = _grow(small_ckpt, corpus, tmp_path / "r", "layers=2", "--data.seq_len=64", "--train.steps=2")
    cfg = json.loads((grown / "config.json").read_text())
    assert cfg["n_positions"] == 64 and out["step"] == 3 and out["val_loss"] < 10
    model = transformers.AutoModelForCausalLM.from_pretrained(grown)
    wpe = model.transformer.wpe.weight
    assert wpe.shape[0] == 64
    assert model(torch.zeros(1, 64, dtype=torch.long)).logits.shape == (1, 64, 257)


def test_position_table_is_tiled_and_rope_keeps_its_base():
    from growth.ligo import LigoConfig, LigoOperator
    from growth.models import ModelConfig, Transformer
    from growth.targets import target_config

    src = ModelConfig(vocab_size=20, n_layers=1, d_model=8, n_heads=2, d_ff=16, max_seq_len=4)
    small = Transformer(src).state_dict()
    grown = LigoOperator(small, src, target_config(src, "positions=10"), LigoConfig(noise=0.0)).grow()
    assert torch.equal(grown["pos_emb.weight"], small["pos_emb.weight"][torch.arange(10) % 4])
    rope = ModelConfig(arch="llama", vocab_size=20, n_layers=1, d_model=8, n_heads=2, d_ff=16, rope_theta=5e5)
    assert target_config(rope, "d_model=16", seq_len=1024).rope_theta == 5e5
