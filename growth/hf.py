"""Hugging Face-format checkpoint folders (GPT-2, BERT, Llama, ViT families) <-> our canonical :class:`Transformer`.

A checkpoint folder is ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``, or a sharded
``*.index.json``) + optional tokenizer files; no hub access is ever made. What :func:`save_hf_folder` writes,
``transformers.AutoModelFor{CausalLM,MaskedLM,ImageClassification}.from_pretrained`` loads with the same logits.
A grown folder carries what the source folder had: tokenizer files, chat template, generation config, image
processor config, and every config.json field that growth does not change (dropout, special token ids, ...).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from growth.hf_weights import _canonical_to_hf, _hf_to_canonical
from growth.models import ARCHS, ModelConfig, Transformer
from growth.targets import TargetError

__all__ = [
    "CheckpointFolderError",
    "load_hf_folder",
    "save_hf_folder",
    "hf_config_dict",
    "validate_hf_config",
    "TOKENIZER_FILES",
    "CARRIED_FILES",
]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "added_tokens.json",
)
# copied verbatim from the source folder into a grown one
CARRIED_FILES = (
    *TOKENIZER_FILES,
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "preprocessor_config.json",
)
# config.json fields that growth sets; every other field of the source's config.json is kept
_SHAPE_FIELDS = {
    "model_type",
    "architectures",
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "tie_word_embeddings",
    "image_size",
    "patch_size",
    "num_channels",
}
_DROPPED_FIELDS = {"_name_or_path", "transformers_version", "quantization_config", "torch_dtype", "dtype"}


class CheckpointFolderError(ValueError):
    """A checkpoint folder that cannot be read; the message says what is missing and how to fix it."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointFolderError(f"{path}: cannot read JSON ({e}); the checkpoint folder is damaged") from e


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    st = folder / "model.safetensors"
    if st.exists():
        return load_file(str(st))
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            shards = sorted(set(_read_json(index)["weight_map"].values()))
            out: dict[str, torch.Tensor] = {}
            for s in shards:
                p = folder / s
                if not p.exists():
                    raise CheckpointFolderError(f"{folder}: shard {s} listed in {index_name} is missing")
                out.update(
                    load_file(str(p))
                    if s.endswith(".safetensors")
                    else torch.load(p, map_location="cpu", weights_only=True)
                )
            return out
    binf = folder / "pytorch_model.bin"
    if binf.exists():
        return torch.load(binf, map_location="cpu", weights_only=True)
    raise CheckpointFolderError(
        f"{folder}: no weights found (expected model.safetensors, pytorch_model.bin or *.index.json shards); "
        f"pass --small a folder written by save_pretrained / genai-train grow"
    )


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", None):
        raise CheckpointFolderError(f"llama rope_type={kind!r} (scaled RoPE) is not supported; only default RoPE")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _int(v) -> int:
    """image_size / patch_size may be an int or a square [h, w] pair."""
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise CheckpointFolderError(f"non-square size {v} is not supported (vit)")
        return int(v[0])
    return int(v)


def _config_from_hf(hf: dict, folder: Path) -> ModelConfig:
    mt = hf.get("model_type")
    if mt == "deit":
        raise CheckpointFolderError(
            f"{folder}: model_type 'deit' (DeiT with a distillation token) is not supported; DeiT checkpoints "
            f"without distillation are stored as model_type 'vit' (ViTForImageClassification) and are supported"
        )
    if mt not in ARCHS:
        raise CheckpointFolderError(
            f"{folder}: model_type {mt!r} is not supported; supported architectures: "
            f"{', '.join(ARCHS)} (GPT-2, BERT, Llama and ViT families)"
        )
    if mt == "vit":
        if hf.get("hidden_act", "gelu") != "gelu" or not hf.get("qkv_bias", True):
            raise CheckpointFolderError(f"{folder}: vit needs hidden_act 'gelu' and qkv_bias true")
        size, patch = _int(hf.get("image_size", 224)), _int(hf.get("patch_size", 16))
        return ModelConfig(
            arch="vit",
            vocab_size=len(hf.get("id2label") or {}) or hf.get("num_labels", 2),
            n_layers=hf["num_hidden_layers"],
            d_model=hf["hidden_size"],
            n_heads=hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            max_seq_len=(size // patch) ** 2 + 1,
            tie_embeddings=False,
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            image_size=size,
            patch_size=patch,
            num_channels=hf.get("num_channels", 3),
        )
    if mt == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise CheckpointFolderError(f"{folder}: gpt2 activation {act!r} is not supported (gelu_new only)")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise CheckpointFolderError(
                f"{folder}: gpt2 scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported"
            )
        D = hf["n_embd"]
        return ModelConfig(
            arch="gpt2",
            vocab_size=hf["vocab_size"],
            n_layers=hf["n_layer"],
            d_model=D,
            n_heads=hf["n_head"],
            d_ff=hf.get("n_inner") or 4 * D,
            max_seq_len=hf["n_positions"],
            tie_embeddings=hf.get("tie_word_embeddings", True),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )
    if mt == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointFolderError(f"{folder}: bert position_embedding_type must be 'absolute'")
        if hf.get("hidden_act", "gelu") != "gelu":
            raise CheckpointFolderError(f"{folder}: bert hidden_act {hf.get('hidden_act')!r} unsupported (gelu)")
        return ModelConfig(
            arch="bert",
            vocab_size=hf["vocab_size"],
            n_layers=hf["num_hidden_layers"],
            d_model=hf["hidden_size"],
            n_heads=hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            max_seq_len=hf["max_position_embeddings"],
            tie_embeddings=hf.get("tie_word_embeddings", True),
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            type_vocab_size=hf.get("type_vocab_size", 2),
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointFolderError(f"{folder}: llama hidden_act {hf.get('hidden_act')!r} unsupported (silu)")
    H = hf["num_attention_heads"]
    return ModelConfig(
        arch="llama",
        vocab_size=hf["vocab_size"],
        n_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        n_heads=H,
        n_kv_heads=hf.get("num_key_value_heads") or H,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // H,
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(hf),
        attn_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )


def load_hf_folder(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], list[str]]:
    """Read a local HF-format checkpoint folder -> (config, canonical state dict, notes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointFolderError(
            f"checkpoint folder {folder} does not exist (or is a file); pass --small a "
            f"folder holding config.json and model.safetensors"
        )
    if not (folder / "config.json").exists():
        raise CheckpointFolderError(
            f"{folder}: config.json is missing; a Hugging Face-format checkpoint folder "
            f"needs config.json plus model.safetensors or pytorch_model.bin"
        )
    hf = _read_json(folder / "config.json")
    cfg = _config_from_hf(hf, folder)
    raw = _load_weights(folder)
    if cfg.arch == "bert":  # the folder's layout: a pooler, an MLM head (BertForMaskedLM) or none (BertModel)
        has = {k.removeprefix("bert.") for k in raw}
        cfg = replace(
            cfg, pooler="pooler.dense.weight" in has, encoder_only="cls.predictions.transform.dense.weight" not in has
        )
    try:
        sd, notes = _hf_to_canonical(cfg, raw)
    except KeyError as e:
        raise CheckpointFolderError(
            f"{folder}: weight {e.args[0]!r} is missing for a {cfg.arch} model with "
            f"{cfg.n_layers} layers; the weights do not match config.json"
        ) from None
    ref = Transformer(replace(cfg))
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointFolderError(f"{folder}: {k} has shape {tuple(sd[k].shape)}, config.json implies {shape}")
    return cfg, sd, notes


def hf_config_dict(cfg: ModelConfig) -> dict:
    """config.json contents that ``transformers`` reads back into the same architecture."""
    if cfg.arch == "gpt2":
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_seq_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "tie_word_embeddings": cfg.tie_embeddings,
            "bos_token_id": cfg.vocab_size - 1,
            "eos_token_id": cfg.vocab_size - 1,
        }
    if cfg.arch == "vit":
        return {
            "model_type": "vit",
            "architectures": ["ViTForImageClassification"],
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.d_ff,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "layer_norm_eps": cfg.norm_eps,
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "num_channels": cfg.num_channels,
            "qkv_bias": True,
            "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.vocab_size)},
            "label2id": {f"LABEL_{i}": i for i in range(cfg.vocab_size)},
        }
    if cfg.arch == "bert":
        return {
            "model_type": "bert",
            "architectures": ["BertModel" if cfg.encoder_only else "BertForMaskedLM"],
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.d_ff,
            "hidden_act": "gelu",
            "max_position_embeddings": cfg.max_seq_len,
            "type_vocab_size": cfg.type_vocab_size,
            "layer_norm_eps": cfg.norm_eps,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": cfg.tie_embeddings,
            "pad_token_id": 0,
        }
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.dh,
        "intermediate_size": cfg.d_ff,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.has_attn_bias,
        "mlp_bias": cfg.has_mlp_bias,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def merged_config(cfg: ModelConfig, source: dict | None = None) -> dict:
    """config.json of ``cfg``: the source's fields, with the sizes growth changed (and our defaults for fields
    the source does not have). Dropout, special token ids, labels, RoPE base etc. stay the source's."""
    ours = hf_config_dict(cfg)
    if not source or source.get("model_type") != ours["model_type"]:
        return {**ours, "dtype": "float32"}
    out = {**ours, **{k: v for k, v in source.items() if k not in _DROPPED_FIELDS}}
    out.update({k: v for k, v in ours.items() if k in _SHAPE_FIELDS})
    return {**out, "dtype": "float32"}  # the weights we write are float32


def validate_hf_config(cfg: ModelConfig, source: dict | None = None) -> None:
    """Build the transformers config object of ``cfg`` and let transformers validate it (raises TargetError)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    d = merged_config(cfg, source)
    try:
        AutoConfig.for_model(**d).validate()
    except Exception as e:  # transformers raises its own validation error types
        msg = str(e).strip().splitlines()[-1].strip()
        raise TargetError(
            f"target rule 'transformers config' ({d['model_type']}): transformers refuses the target config: {msg}"
        ) from None


def save_hf_folder(
    model: Transformer | dict,
    cfg: ModelConfig,
    folder: str | Path,
    source: str | Path | None = None,
    tokenizer=None,
) -> Path:
    """Write config.json + model.safetensors so that ``transformers.AutoModelFor*.from_pretrained(folder)``
    rebuilds the same model, carrying what the ``source`` folder had (:data:`CARRIED_FILES`, config fields).

    ``tokenizer`` (anything with ``save_pretrained``) is saved instead of the source's tokenizer files, e.g. the
    byte-level tokenizer of a model trained on UTF-8 bytes.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    src_cfg = None
    if source is not None:
        for name in CARRIED_FILES:
            if tokenizer is not None and name in TOKENIZER_FILES:
                continue
            f = Path(source) / name
            if f.exists():
                shutil.copy2(f, folder / name)
        if (Path(source) / "config.json").exists():
            src_cfg = _read_json(Path(source) / "config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    save_file(_canonical_to_hf(cfg, sd), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(merged_config(cfg, src_cfg), indent=2))
    (folder / "genai_train_model.json").write_text(json.dumps(asdict(cfg), indent=2))
    return folder
