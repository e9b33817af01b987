"""Growth runs: exact resume across the operator and training phases, bad-input messages."""

import json

import pytest
import torch

from genai_train.config import ConfigError, load_config
from growth.data import ByteTokenizer, DataConfig, TextData
from growth.hf import save_hf_folder
from growth.models import ModelConfig, Transformer
from growth.targets import target_config
from growth.train import GrowConfig, run

from .conftest import TEXT


def _cfg(corpus, small, run_dir, *extra):
    return load_config(
        GrowConfig,
        None,
        [
            f"--small={small}",
            "--target=layers=2,d_model=32,heads=4,ffn=64",
            f"--data.root={corpus}",
            "--data.seq_len=16",
            "--data.batch_size=4",
            "--data.val_batches=2",
            "--ligo.steps=4",
            "--ligo.warmup_steps=1",
            "--train.steps=4",
            "--run.log_every=1",
            "--eval.every=0",
            "--ckpt.every=1",
            "--run.device=cpu",
            f"--run.dir={run_dir}",
            *extra,
        ],
    )


def _losses(run_dir):
    rows = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize(
    "ligo_steps, train_steps, grad_accum",
    [(6, 4, 1), (4, 6, 2)],  # step 5 inside the operator phase, then after it (with 2 micro-batches a step)
)
def test_resume_matches_uninterrupted_run(corpus, small_ckpt, tmp_path, ligo_steps, train_steps, grad_accum):
    """10 steps straight == 5 steps, interrupted, resumed for 5: losses and the grown weights bit for bit."""
    flags = (f"--ligo.steps={ligo_steps}", f"--train.steps={train_steps}", f"--train.grad_accum={grad_accum}")
    full = run(_cfg(corpus, small_ckpt, tmp_path / "full", *flags, "--ckpt.every=0"))
    cut = run(_cfg(corpus, small_ckpt, tmp_path / "cut", *flags, "--ckpt.every=0"), stop_after=5)
    assert cut["step"] == 5 and cut["phase"] == ("ligo" if ligo_steps > 5 else "train")
    assert max(_losses(tmp_path / "cut")) == 5
    resumed = run(_cfg(corpus, small_ckpt, tmp_path / "cut", *flags, "--ckpt.every=0"))
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert all(a[s] == b[s] for s in a), (a, b)
    assert full["val_loss"] == resumed["val_loss"] and full["flops"] == resumed["flops"]
    weights = [(tmp_path / r / "hf" / "model.safetensors").read_bytes() for r in ("full", "cut")]
    assert weights[0] == weights[1]


def test_operator_phase_lowers_the_loss_of_the_grown_model(corpus, small_ckpt, tmp_path):
    cfg = _cfg(
        corpus,
        small_ckpt,
        tmp_path / "r",
        "--ligo.steps=15",
        "--ligo.optim.lr=3e-3",
        "--train.steps=1",
        "--ckpt.every=0",
    )
    run(cfg)
    rows = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[-1] < val[0]


def test_bad_inputs_have_clear_messages(corpus, small_ckpt, tmp_path):
    with pytest.raises(ValueError, match="target d_model=8 is smaller than the source's 16"):
        run(
            load_config(
                GrowConfig,
                None,
                [
                    f"--small={small_ckpt}",
                    "--target=d_model=8",
                    f"--data.root={corpus}",
                    f"--run.dir={tmp_path / 'a'}",
                ],
            )
        )
    with pytest.raises(ValueError, match="target layers=0|n_layers"):
        run(
            load_config(
                GrowConfig,
                None,
                [
                    f"--small={small_ckpt}",
                    "--target=layers=0",
                    f"--data.root={corpus}",
                    f"--run.dir={tmp_path / 'b'}",
                ],
            )
        )
    with pytest.raises(ValueError, match="heads=5 does not divide d_model=32"):
        target_config(ModelConfig(d_model=16, n_heads=2), "d_model=32,heads=5")
    with pytest.raises(ValueError, match="heads=3 does not divide d_model=16"):
        ModelConfig(d_model=16, n_heads=3)
    with pytest.raises(ConfigError, match="unknown target key 'layer'.*did you mean 'layers'"):
        load_config(GrowConfig, None, ["--target=layer=4"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("  \n")
    with pytest.raises(ValueError, match="is empty: no non-empty files"):
        TextData(DataConfig(root=str(empty)), ByteTokenizer())
    with pytest.raises(ValueError, match="pass --small FOLDER"):
        run(load_config(GrowConfig, None, [f"--data.root={corpus}", f"--run.dir={tmp_path / 'c'}"]))
    with pytest.raises(ValueError, match="missing ffn, heads"):
        run(
            load_config(
                GrowConfig,
                None,
                [
                    "--method=scratch",
                    "--target=layers=2,d_model=32",
                    f"--data.root={corpus}",
                    f"--run.dir={tmp_path / 'd'}",
                ],
            )
        )
    with pytest.raises(ValueError, match="config.json is missing"):
        run(
            load_config(
                GrowConfig,
                None,
                [f"--small={tmp_path}", f"--data.root={corpus}", f"--run.dir={tmp_path / 'e'}"],
            )
        )


def test_config_files_load():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[2].joinpath("configs", "grow").glob("*.yaml")):
        assert path.read_text().startswith("# config: growth.train:GrowConfig")
        load_config(GrowConfig, path)


def test_bert_mlm_growth_uses_the_checkpoint_tokenizer(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    words = sorted(set(TEXT.replace("(", " ").replace(")", " ").replace(":", " ").replace(".", " ").split()))
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *words,
        *"abcdefghijklmnopqrstuvwxyz0123456789,#+=",
    ]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer(vocab_file=str(tmp_path / "vocab.txt"))
    tok.save_pretrained(tmp_path / "tok")
    cfg = ModelConfig(arch="bert", vocab_size=len(tok), n_layers=1, d_model=16, n_heads=2, d_ff=32, max_seq_len=32)
    torch.manual_seed(0)
    small = save_hf_folder(Transformer(cfg), cfg, tmp_path / "bert_small", source=tmp_path / "tok")
    out = run(
        load_config(
            GrowConfig,
            None,
            [
                f"--small={small}",
                "--target=layers=2,d_model=32,heads=4,ffn=64",
                f"--data.root={corpus}",
                "--data.seq_len=16",
                "--data.batch_size=4",
                "--data.val_batches=1",
                "--ligo.steps=2",
                "--ligo.warmup_steps=1",
                "--train.steps=2",
                "--run.device=cpu",
                f"--run.dir={tmp_path / 'run'}",
            ],
        )
    )
    assert out["target"]["d_model"] == 32 and out["val_loss"] < 10
    grown = tmp_path / "run" / "hf"
    assert transformers.AutoTokenizer.from_pretrained(grown).get_vocab() == tok.get_vocab()
    hf = transformers.AutoModelForMaskedLM.from_pretrained(grown)
    assert hf.config.hidden_size == 32 and hf.config.num_hidden_layers == 2


def test_depth_coefficients_take_their_own_learning_rate(corpus, small_ckpt, tmp_path):
    """Adam's first step moves a coordinate by its group's LR (times g/(|g| + eps), so 1% less for tiny
    gradients; zero gradients, here the depth coefficients of the all-zero fresh biases, do not move)."""
    from growth.train import GrowTrainer

    cfg = _cfg(
        corpus, small_ckpt, tmp_path / "r", "--ligo.optim.lr=1e-5", "--ligo.depth_lr=1e-2", "--ligo.warmup_steps=0"
    )
    tr = GrowTrainer(cfg)
    before = {n: p.detach().clone() for n, p in tr.op.named_parameters()}
    tr.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in tr.op.named_parameters()}
    depth = [v for n, v in moved.items() if n.startswith("depth.") and v > 0]
    width = [v for n, v in moved.items() if n.startswith("width.")]
    assert len(depth) >= 8 and all(0.99e-2 < v <= 1.0001e-2 for v in depth), moved
    assert width and all(0.99e-5 < v <= 1.002e-5 for v in width), moved
    tr.close()
    with pytest.raises(ValueError, match="ligo.depth_lr=-1.0 must be > 0"):
        _cfg(corpus, small_ckpt, tmp_path / "x", "--ligo.depth_lr=-1")
