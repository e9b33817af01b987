"""Tiny growth fixtures: a text folder and small GPT-2 / BERT checkpoints (byte vocabulary)."""

import pytest
import torch

from growth.hf import save_hf_folder
from growth.models import ModelConfig, Transformer

TEXT = "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, x):\n        self.items.append(x)\n" * 60


@pytest.fixture()
def corpus(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    for i in range(4):
        (d / f"f{i}.py").write_text(TEXT[i * 7 :] + f"# file {i}\n")
    return d


def small_checkpoint(folder, arch: str = "gpt2"):
    cfg = ModelConfig(arch=arch, vocab_size=257, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_seq_len=32)
    torch.manual_seed(0)
    return save_hf_folder(Transformer(cfg), cfg, folder)


@pytest.fixture()
def small_ckpt(tmp_path):
    return small_checkpoint(tmp_path / "small")
