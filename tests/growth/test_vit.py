"""The ViT family (ViTForImageClassification, DeiT without distillation token): read, grow, write."""

import os

import pytest
import torch

from genai_train.config import load_config
from growth.hf import CheckpointFolderError, load_hf_folder
from growth.ligo import LigoConfig
from growth.models import Transformer
from growth.train import GrowConfig, grow_folder, run

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_vit(folder):
    cfg = transformers.ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=8,
        patch_size=4,
        num_channels=3,
        num_labels=5,
        hidden_dropout_prob=0.1,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return model


def test_reader_matches_transformers_vit(tmp_path):
    ref = tiny_vit(tmp_path / "small")
    cfg, sd, _ = load_hf_folder(tmp_path / "small")
    ours = Transformer(cfg).eval()
    ours.load_state_dict(sd)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(pixel_values=x).logits, rtol=1e-4, atol=1e-4)


def test_grown_vit_loads_in_transformers_with_our_logits(tmp_path):
    small = tiny_vit(tmp_path / "small")
    tgt = grow_folder(tmp_path / "small", "layers=3,d_model=32,heads=4,ffn=64", tmp_path / "grown")
    assert (tgt.n_layers, tgt.d_model, tgt.n_heads, tgt.vocab_size) == (3, 32, 4, 5)
    hf, info = transformers.AutoModelForImageClassification.from_pretrained(
        tmp_path / "grown", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf.config.hidden_dropout_prob == 0.1 and hf.config.num_labels == 5
    cfg, sd, _ = load_hf_folder(tmp_path / "grown")
    ours = Transformer(cfg).eval()
    ours.load_state_dict(sd)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(pixel_values=x).logits, ours(x), rtol=1e-4, atol=1e-4)
    # width only (DeiT-S -> DeiT-B is 384 -> 768 at 12 layers): the Net2Net init computes the small model's function
    grow_folder(tmp_path / "small", "d_model=32,heads=4,ffn=64", tmp_path / "wide", ligo=LigoConfig(noise=0.0))
    wide = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "wide").eval()
    with torch.no_grad():
        torch.testing.assert_close(wide(pixel_values=x).logits, small(pixel_values=x).logits, rtol=1e-4, atol=1e-4)


def test_vit_training_and_bad_targets_are_refused_clearly(corpus, tmp_path):
    tiny_vit(tmp_path / "small")
    args = [f"--small={tmp_path / 'small'}", f"--data.root={corpus}", f"--run.dir={tmp_path / 'r'}"]
    with pytest.raises(ValueError, match="trains on text only.*grow_folder"):
        run(load_config(GrowConfig, None, [*args, "--target=layers=3"]))
    with pytest.raises(ValueError, match=r"vit: positions=20 must be patches \+ 1 = 5"):
        run(load_config(GrowConfig, None, [*args, "--target=positions=20"]))
    assert not (tmp_path / "r").exists()
    (tmp_path / "deit").mkdir()
    (tmp_path / "deit" / "config.json").write_text('{"model_type": "deit"}')
    with pytest.raises(CheckpointFolderError, match="distillation token"):
        load_hf_folder(tmp_path / "deit")
