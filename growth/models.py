"""Small transformer decoders and encoders with one canonical parameter layout, and adapters for
Hugging Face-format checkpoint folders (GPT-2, BERT, Llama families) in both directions.

One module, :class:`Transformer`, covers the three families:

- ``gpt2``  pre-LayerNorm decoder, learned positions, GELU (tanh) MLP, biases, tied head by default
  (Radford et al., "Language Models are Unsupervised Multitask Learners", 2019);
- ``bert``  post-LayerNorm encoder, learned positions + segment embeddings, GELU MLP, MLM head
  (Devlin et al., "BERT", https://arxiv.org/abs/1810.04805);
- ``llama`` pre-RMSNorm decoder, rotary positions, SwiGLU MLP, grouped key/value heads
  (Touvron et al., "LLaMA", https://arxiv.org/abs/2302.13971).

Canonical parameter names (what :mod:`growth.ligo` assigns growth roles to)::

    tok_emb.weight [V, D]   pos_emb.weight [P, D]   type_emb.weight [T, D]   emb_norm.{weight,bias}
    layers.{i}.attn_norm   layers.{i}.q [H*dh, D]  .k/.v [Hkv*dh, D]  .o [D, H*dh]
    layers.{i}.mlp_norm    layers.{i}.up [F, D]    .gate [F, D] (SwiGLU)  .down [D, F]
    final_norm   head_dense [D, D]  head_norm (BERT MLM transform)
    lm_head.weight [V, D] (untied)  lm_head_bias [V]

A checkpoint folder is ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``, or a sharded
``*.index.json``) + optional tokenizer files; no hub access is ever made.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHS",
    "ModelConfig",
    "Transformer",
    "CheckpointFolderError",
    "parse_target",
    "target_config",
    "load_hf_folder",
    "save_hf_folder",
    "hf_config_dict",
    "forward_flops_per_token",
    "TOKENIZER_FILES",
]

Arch = Literal["gpt2", "bert", "llama"]
ARCHS: tuple[str, ...] = ("gpt2", "bert", "llama")
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


class CheckpointFolderError(ValueError):
    """A checkpoint folder that cannot be read; the message says what is missing and how to fix it."""


@dataclass
class ModelConfig:
    """Shape and family of a transformer. Family-specific choices (norm, MLP, positions) are derived."""

    arch: Arch = field(default="gpt2", metadata={"help": "family: gpt2 (decoder) | bert (encoder, MLM) | llama"})
    vocab_size: int = field(default=257, metadata={"help": "token vocabulary size"})
    n_layers: int = field(default=4, metadata={"help": "number of transformer blocks"})
    d_model: int = field(default=128, metadata={"help": "residual stream width"})
    n_heads: int = field(default=4, metadata={"help": "attention (query) heads"})
    n_kv_heads: int | None = field(default=None, metadata={"help": "key/value heads (GQA); None = n_heads"})
    head_dim: int | None = field(default=None, metadata={"help": "per-head width; None = d_model / n_heads"})
    d_ff: int = field(default=512, metadata={"help": "MLP hidden width"})
    max_seq_len: int = field(default=256, metadata={"help": "positions of the learned position table"})
    tie_embeddings: bool = field(default=True, metadata={"help": "LM head shares the token embedding"})
    norm_eps: float = field(default=1e-5, metadata={"help": "LayerNorm / RMSNorm epsilon"})
    rope_theta: float = field(default=10000.0, metadata={"help": "rotary base (llama)"})
    type_vocab_size: int = field(default=2, metadata={"help": "segment embeddings (bert)"})
    attn_bias: bool | None = field(default=None, metadata={"help": "q/k/v/o biases; None = family default"})
    mlp_bias: bool | None = field(default=None, metadata={"help": "MLP biases; None = family default"})

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"architecture {self.arch!r} is not supported; supported: {', '.join(ARCHS)}")
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "d_ff", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"heads={self.n_heads} does not divide d_model={self.d_model}; choose heads so that "
                f"d_model/heads is an integer (e.g. heads={_divisor_near(self.d_model, self.n_heads)})"
            )
        if self.head_dim is not None and self.arch != "llama" and self.head_dim * self.n_heads != self.d_model:
            raise ValueError(
                f"{self.arch}: head_dim*heads must equal d_model ({self.head_dim}*{self.n_heads} != "
                f"{self.d_model}); leave head_dim unset"
            )
        kv = self.n_kv_heads if self.n_kv_heads is not None else self.n_heads
        if kv < 1 or self.n_heads % kv:
            raise ValueError(f"kv_heads={kv} must divide heads={self.n_heads}")
        if kv != self.n_heads and self.arch != "llama":
            raise ValueError(f"{self.arch} has no grouped key/value heads; leave kv_heads unset")

    # -- derived --------------------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def dh(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def causal(self) -> bool:
        return self.arch != "bert"

    @property
    def post_ln(self) -> bool:
        return self.arch == "bert"

    @property
    def rope(self) -> bool:
        return self.arch == "llama"

    @property
    def swiglu(self) -> bool:
        return self.arch == "llama"

    @property
    def has_attn_bias(self) -> bool:
        return self.attn_bias if self.attn_bias is not None else self.arch != "llama"

    @property
    def has_mlp_bias(self) -> bool:
        return self.mlp_bias if self.mlp_bias is not None else self.arch != "llama"

    @property
    def objective(self) -> Literal["clm", "mlm"]:
        return "mlm" if self.arch == "bert" else "clm"


def _divisor_near(n: int, k: int) -> int:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return min(divs, key=lambda d: abs(d - k))


# ---------------------------------------------------------------------------------------------------------
# model


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019), computed in fp32 like the Llama reference."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _norm(cfg: ModelConfig, d: int) -> nn.Module:
    return RMSNorm(d, cfg.norm_eps) if cfg.arch == "llama" else nn.LayerNorm(d, eps=cfg.norm_eps)


def _act(cfg: ModelConfig, x: torch.Tensor) -> torch.Tensor:
    if cfg.arch == "gpt2":
        return F.gelu(x, approximate="tanh")  # GPT-2's "gelu_new"
    if cfg.arch == "bert":
        return F.gelu(x)
    return F.silu(x)


def rope_cos_sin(seq_len: int, dh: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables in the half-split layout (Su et al., https://arxiv.org/abs/2104.09864): [T, dh] each."""
    inv = 1.0 / (theta ** (torch.arange(0, dh, 2, device=device, dtype=torch.float32) / dh))  # [dh/2]
    ang = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None] * inv[None]  # [T, dh/2]
    ang = torch.cat([ang, ang], dim=-1)  # [T, dh]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, dh] rotated pairwise (i, i + dh/2)."""
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rot * sin


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, H, Hkv, dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh
        self.attn_norm = _norm(cfg, D)
        self.q = nn.Linear(D, H * dh, bias=cfg.has_attn_bias)
        self.k = nn.Linear(D, Hkv * dh, bias=cfg.has_attn_bias)
        self.v = nn.Linear(D, Hkv * dh, bias=cfg.has_attn_bias)
        self.o = nn.Linear(H * dh, D, bias=cfg.has_attn_bias)
        self.mlp_norm = _norm(cfg, D)
        self.up = nn.Linear(D, cfg.d_ff, bias=cfg.has_mlp_bias)
        if cfg.swiglu:
            self.gate = nn.Linear(D, cfg.d_ff, bias=cfg.has_mlp_bias)
        self.down = nn.Linear(cfg.d_ff, D, bias=cfg.has_mlp_bias)

    def attention(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        q = self.q(x).view(B, T, cfg.n_heads, cfg.dh).transpose(1, 2)  # [B, H, T, dh]
        k = self.k(x).view(B, T, cfg.kv_heads, cfg.dh).transpose(1, 2)  # [B, Hkv, T, dh]
        v = self.v(x).view(B, T, cfg.kv_heads, cfg.dh).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cfg.kv_heads != cfg.n_heads:  # query head j reads kv head j // group
            g = cfg.n_heads // cfg.kv_heads
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cfg.causal)  # [B, H, T, dh]
        return self.o(y.transpose(1, 2).reshape(B, T, cfg.n_heads * cfg.dh))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(_act(self.cfg, self.up(x)))

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        if self.cfg.post_ln:
            x = self.attn_norm(x + self.attention(x, rope))
            return self.mlp_norm(x + self.mlp(x))
        x = x + self.attention(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Token ids [B, T] -> logits [B, T, V] for every family in :data:`ARCHS`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, D)
        if not cfg.rope:
            self.pos_emb = nn.Embedding(cfg.max_seq_len, D)
        if cfg.arch == "bert":
            self.type_emb = nn.Embedding(cfg.type_vocab_size, D)
            self.emb_norm = _norm(cfg, D)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        if not cfg.post_ln:
            self.final_norm = _norm(cfg, D)
        if cfg.arch == "bert":
            self.head_dense = nn.Linear(D, D)
            self.head_norm = _norm(cfg, D)
            self.lm_head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(D, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """GPT-2 style init: N(0, 0.02), residual-writing projections scaled by 1/sqrt(2 L)."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name:
                nn.init.ones_(p)
            elif name.endswith(("o.weight", "down.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.n_layers))
            else:
                nn.init.normal_(p, std=std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T = ids.shape
        if T > cfg.max_seq_len and not cfg.rope:
            raise ValueError(f"sequence length {T} exceeds the model's {cfg.max_seq_len} positions; lower data.seq_len")
        x = self.tok_emb(ids)  # [B, T, D]
        rope = None
        if cfg.rope:
            rope = rope_cos_sin(T, cfg.dh, cfg.rope_theta, ids.device, x.dtype)
        else:
            x = x + self.pos_emb.weight[:T]
        if cfg.arch == "bert":
            x = self.emb_norm(x + self.type_emb.weight[0])
        for layer in self.layers:
            x = layer(x, rope)
        if not cfg.post_ln:
            x = self.final_norm(x)
        if cfg.arch == "bert":
            x = self.head_norm(_act(cfg, self.head_dense(x)))
        w = self.tok_emb.weight if cfg.tie_embeddings else self.lm_head.weight
        logits = F.linear(x, w)
        if cfg.arch == "bert":
            logits = logits + self.lm_head_bias
        return logits


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token: 2 x (matmul weights, head included) + 2 L T d_attn for the score and value
    products (Kaplan et al. 2020, https://arxiv.org/abs/2001.08361, Table 1). Training costs 3x this."""
    D, F_, L = cfg.d_model, cfg.d_ff, cfg.n_layers
    attn = D * cfg.n_heads * cfg.dh * 2 + D * cfg.kv_heads * cfg.dh * 2
    mlp = D * F_ * (3 if cfg.swiglu else 2)
    head = D * cfg.vocab_size + (D * D if cfg.arch == "bert" else 0)
    return 2.0 * (L * (attn + mlp) + head) + 2.0 * L * seq_len * cfg.n_heads * cfg.dh


# ---------------------------------------------------------------------------------------------------------
# growth targets

# Per-layer Hugging Face module names of our canonical ones (read and write share these tables).
_BERT_LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "up": "intermediate.dense",
    "down": "output.dense",
    "mlp_norm": "output.LayerNorm",
}
_LLAMA_LINEAR = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_LLAMA_NORMS = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


_TARGET_KEYS = {
    "layers": "n_layers",
    "d_model": "d_model",
    "heads": "n_heads",
    "kv_heads": "n_kv_heads",
    "ffn": "d_ff",
    "head_dim": "head_dim",
}


def parse_target(spec: str) -> dict[str, int]:
    """``"layers=8,d_model=256,heads=8,ffn=1024"`` -> {"n_layers": 8, ...} (ModelConfig field names)."""
    from genai_train.config import closest

    out: dict[str, int] = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if "=" not in part:
            raise ValueError(f"target part {part!r} must look like key=value, e.g. layers=8")
        key, val = (s.strip() for s in part.split("=", 1))
        if key not in _TARGET_KEYS:
            raise ValueError(
                f"unknown target key {key!r}{closest(key, list(_TARGET_KEYS))}; keys: {', '.join(_TARGET_KEYS)}"
            )
        try:
            out[_TARGET_KEYS[key]] = int(val)
        except ValueError:
            raise ValueError(f"target {key}={val!r} is not an integer") from None
    return out


def target_config(src: ModelConfig, spec: str | dict) -> ModelConfig:
    """The grown model's config: ``src`` with the sizes in ``spec`` (anything unset scales with d_model).

    Growth only enlarges: every dimension must be >= the source's. RoPE models keep head_dim (rotary pairs
    must not mix), so their extra width comes as extra heads.
    """
    want = parse_target(spec) if isinstance(spec, str) else dict(spec)
    inv = {v: k for k, v in _TARGET_KEYS.items()}
    D2 = want.get("d_model", src.d_model)
    ratio = D2 / src.d_model
    if "n_heads" not in want:
        heads = src.n_heads * D2 // src.d_model if (src.n_heads * D2) % src.d_model == 0 else src.n_heads
        want["n_heads"] = heads
    H2 = want["n_heads"]
    if "n_kv_heads" not in want:
        want["n_kv_heads"] = None if src.kv_heads == src.n_heads else H2 * src.kv_heads // src.n_heads
    if "d_ff" not in want:
        want["d_ff"] = max(src.d_ff, int(round(src.d_ff * ratio)))
    if src.rope:
        want.setdefault("head_dim", src.dh)
        if want["head_dim"] != src.dh:
            raise ValueError(
                f"llama (RoPE) growth keeps head_dim={src.dh}; drop head_dim and set "
                f"heads to add width (e.g. heads={D2 // src.dh})"
            )
    elif "head_dim" in want:
        if want["head_dim"] * H2 != D2:
            raise ValueError(f"target head_dim={want['head_dim']} * heads={H2} != d_model={D2}")
        want["head_dim"] = None
    if not src.rope and D2 % H2:
        raise ValueError(
            f"target heads={H2} does not divide d_model={D2}; choose heads from "
            f"{[h for h in range(1, D2 + 1) if D2 % h == 0 and h >= src.n_heads][:8]}"
        )
    tgt = replace(src, **want)
    for f in ("n_layers", "d_model", "n_heads", "kv_heads", "d_ff", "dh"):
        a, b = getattr(src, f), getattr(tgt, f)
        if b < a:
            key = inv.get(f, {"kv_heads": "kv_heads", "dh": "head_dim"}.get(f, f))
            raise ValueError(
                f"target {key}={b} is smaller than the source's {a}; growth only enlarges a model: pass {key} >= {a}"
            )
    return tgt


# ---------------------------------------------------------------------------------------------------------
# Hugging Face checkpoint folders


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


def _config_from_hf(hf: dict, folder: Path) -> ModelConfig:
    mt = hf.get("model_type")
    if mt not in ARCHS:
        raise CheckpointFolderError(
            f"{folder}: model_type {mt!r} is not supported; supported architectures: "
            f"{', '.join(ARCHS)} (GPT-2, BERT and Llama families)"
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


def _strip(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p) :]
                break
        out[k.replace(".gamma", ".weight").replace(".beta", ".bias")] = v
    return out


def _hf_to_canonical(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF names -> canonical names. Returns (state, notes about what was missing and initialised)."""
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    D = cfg.d_model
    if cfg.arch == "gpt2":
        sd = _strip(sd, ("transformer.",))
        out["tok_emb.weight"] = sd["wte.weight"]
        out["pos_emb.weight"] = sd["wpe.weight"]
        for i in range(cfg.n_layers):
            p, c = f"h.{i}.", f"layers.{i}."
            w, b = sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]  # Conv1D: [D, 3D], (in, out)
            for j, n in enumerate("qkv"):
                out[c + f"{n}.weight"] = w[:, j * D : (j + 1) * D].t()
                out[c + f"{n}.bias"] = b[j * D : (j + 1) * D]
            out[c + "o.weight"] = sd[p + "attn.c_proj.weight"].t()
            out[c + "o.bias"] = sd[p + "attn.c_proj.bias"]
            out[c + "up.weight"] = sd[p + "mlp.c_fc.weight"].t()
            out[c + "up.bias"] = sd[p + "mlp.c_fc.bias"]
            out[c + "down.weight"] = sd[p + "mlp.c_proj.weight"].t()
            out[c + "down.bias"] = sd[p + "mlp.c_proj.bias"]
            for a, n in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
                out[c + f"{n}.weight"], out[c + f"{n}.bias"] = sd[p + f"{a}.weight"], sd[p + f"{a}.bias"]
        out["final_norm.weight"], out["final_norm.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
    elif cfg.arch == "bert":
        sd = _strip(sd, ("bert.",))
        e = "embeddings."
        out["tok_emb.weight"] = sd[e + "word_embeddings.weight"]
        out["pos_emb.weight"] = sd[e + "position_embeddings.weight"]
        out["type_emb.weight"] = sd[e + "token_type_embeddings.weight"]
        out["emb_norm.weight"], out["emb_norm.bias"] = sd[e + "LayerNorm.weight"], sd[e + "LayerNorm.bias"]
        for i in range(cfg.n_layers):
            p, c = f"encoder.layer.{i}.", f"layers.{i}."
            for n, h in _BERT_LAYER.items():
                out[c + f"{n}.weight"], out[c + f"{n}.bias"] = sd[p + h + ".weight"], sd[p + h + ".bias"]
        t = "cls.predictions."
        if t + "transform.dense.weight" in sd:
            out["head_dense.weight"] = sd[t + "transform.dense.weight"]
            out["head_dense.bias"] = sd[t + "transform.dense.bias"]
            out["head_norm.weight"] = sd[t + "transform.LayerNorm.weight"]
            out["head_norm.bias"] = sd[t + "transform.LayerNorm.bias"]
            out["lm_head_bias"] = sd.get(t + "bias", sd.get(t + "decoder.bias"))
            if not cfg.tie_embeddings:
                out["lm_head.weight"] = sd[t + "decoder.weight"]
        else:  # an encoder saved without its MLM head (e.g. sentence-transformers models)
            g = torch.Generator().manual_seed(0)
            out["head_dense.weight"] = torch.randn(D, D, generator=g) * 0.02
            out["head_dense.bias"] = torch.zeros(D)
            out["head_norm.weight"], out["head_norm.bias"] = torch.ones(D), torch.zeros(D)
            out["lm_head_bias"] = torch.zeros(cfg.vocab_size)
            if not cfg.tie_embeddings:
                out["lm_head.weight"] = out["tok_emb.weight"].clone()
            notes.append("the checkpoint has no MLM head (cls.predictions.*): a fresh head was initialised")
    else:
        sd = _strip(sd, ())
        m = "model."
        out["tok_emb.weight"] = sd[m + "embed_tokens.weight"]
        for i in range(cfg.n_layers):
            p, c = f"{m}layers.{i}.", f"layers.{i}."
            for n, h in _LLAMA_LINEAR.items():
                out[c + f"{n}.weight"] = sd[p + h + ".weight"]
                bias_on = cfg.has_attn_bias if n in "qkvo" else cfg.has_mlp_bias
                if bias_on:
                    out[c + f"{n}.bias"] = sd[p + h + ".bias"]
            out[c + "attn_norm.weight"] = sd[p + "input_layernorm.weight"]
            out[c + "mlp_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        out["final_norm.weight"] = sd[m + "norm.weight"]
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.float().contiguous() for k, v in out.items()}, notes


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
    if cfg.arch == "bert":
        return {
            "model_type": "bert",
            "architectures": ["BertForMaskedLM"],
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


def _canonical_to_hf(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if cfg.arch == "gpt2":
        t = "transformer."
        out[t + "wte.weight"], out[t + "wpe.weight"] = sd["tok_emb.weight"], sd["pos_emb.weight"]
        for i in range(cfg.n_layers):
            p, c = f"{t}h.{i}.", f"layers.{i}."
            out[p + "attn.c_attn.weight"] = torch.cat([sd[c + f"{n}.weight"].t() for n in "qkv"], dim=1)
            out[p + "attn.c_attn.bias"] = torch.cat([sd[c + f"{n}.bias"] for n in "qkv"])
            out[p + "attn.c_proj.weight"], out[p + "attn.c_proj.bias"] = (
                sd[c + "o.weight"].t(),
                sd[c + "o.bias"],
            )
            out[p + "mlp.c_fc.weight"], out[p + "mlp.c_fc.bias"] = sd[c + "up.weight"].t(), sd[c + "up.bias"]
            out[p + "mlp.c_proj.weight"] = sd[c + "down.weight"].t()
            out[p + "mlp.c_proj.bias"] = sd[c + "down.bias"]
            for a, n in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
                out[p + f"{a}.weight"], out[p + f"{a}.bias"] = sd[c + f"{n}.weight"], sd[c + f"{n}.bias"]
        out[t + "ln_f.weight"], out[t + "ln_f.bias"] = sd["final_norm.weight"], sd["final_norm.bias"]
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
    elif cfg.arch == "bert":
        e = "bert.embeddings."
        out[e + "word_embeddings.weight"] = sd["tok_emb.weight"]
        out[e + "position_embeddings.weight"] = sd["pos_emb.weight"]
        out[e + "token_type_embeddings.weight"] = sd["type_emb.weight"]
        out[e + "LayerNorm.weight"], out[e + "LayerNorm.bias"] = sd["emb_norm.weight"], sd["emb_norm.bias"]
        for i in range(cfg.n_layers):
            p, c = f"bert.encoder.layer.{i}.", f"layers.{i}."
            for n, h in _BERT_LAYER.items():
                out[p + h + ".weight"], out[p + h + ".bias"] = sd[c + f"{n}.weight"], sd[c + f"{n}.bias"]
        t = "cls.predictions."
        out[t + "transform.dense.weight"], out[t + "transform.dense.bias"] = (
            sd["head_dense.weight"],
            sd["head_dense.bias"],
        )
        out[t + "transform.LayerNorm.weight"] = sd["head_norm.weight"]
        out[t + "transform.LayerNorm.bias"] = sd["head_norm.bias"]
        out[t + "bias"] = sd["lm_head_bias"]
        if not cfg.tie_embeddings:
            out[t + "decoder.weight"] = sd["lm_head.weight"]
    else:
        m = "model."
        out[m + "embed_tokens.weight"] = sd["tok_emb.weight"]
        for i in range(cfg.n_layers):
            p, c = f"{m}layers.{i}.", f"layers.{i}."
            for n, h in {**_LLAMA_LINEAR, **_LLAMA_NORMS}.items():
                for kind in ("weight", "bias"):
                    if c + f"{n}.{kind}" in sd:
                        out[p + h + f".{kind}"] = sd[c + f"{n}.{kind}"]
        out[m + "norm.weight"] = sd["final_norm.weight"]
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def save_hf_folder(
    model: Transformer | dict, cfg: ModelConfig, folder: str | Path, tokenizer_from: str | Path | None = None
) -> Path:
    """Write config.json + model.safetensors (+ the tokenizer files of ``tokenizer_from``) so that
    ``transformers.AutoModelFor{CausalLM,MaskedLM}.from_pretrained(folder)`` rebuilds the same model."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    save_file(_canonical_to_hf(cfg, sd), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2))
    (folder / "genai_train_model.json").write_text(json.dumps(asdict(cfg), indent=2))
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_from) / name
            if src.exists():
                shutil.copy2(src, folder / name)
    return folder
