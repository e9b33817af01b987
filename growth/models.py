"""Small transformer decoders and encoders with one canonical parameter layout.

One module, :class:`Transformer`, covers the three families:

- ``gpt2``  pre-LayerNorm decoder, learned positions, GELU (tanh) MLP, biases, tied head by default
  (Radford et al., "Language Models are Unsupervised Multitask Learners", 2019);
- ``bert``  post-LayerNorm encoder, learned positions + segment embeddings, GELU MLP, MLM head
  (Devlin et al., "BERT", https://arxiv.org/abs/1810.04805);
- ``llama`` pre-RMSNorm decoder, rotary positions, SwiGLU MLP, grouped key/value heads
  (Touvron et al., "LLaMA", https://arxiv.org/abs/2302.13971);
- ``vit``   pre-LayerNorm image encoder: patch embedding, class token, learned positions, GELU MLP, classifier
  on the class token (Dosovitskiy et al., "An Image is Worth 16x16 Words", https://arxiv.org/abs/2010.11929;
  DeiT without distillation token has the same layout).

Canonical parameter names (what :mod:`growth.ligo` assigns growth roles to)::

    tok_emb.weight [V, D]   pos_emb.weight [P, D]   type_emb.weight [T, D]   emb_norm.{weight,bias}
    layers.{i}.attn_norm   layers.{i}.q [H*dh, D]  .k/.v [Hkv*dh, D]  .o [D, H*dh]
    layers.{i}.mlp_norm    layers.{i}.up [F, D]    .gate [F, D] (SwiGLU)  .down [D, F]
    final_norm   head_dense [D, D]  head_norm (BERT MLM transform)   pooler.{weight,bias} (BERT, optional)
    lm_head.weight [V, D] (untied)  lm_head_bias [V]
    patch_emb.weight [D, C*p*p]  patch_emb.bias [D]  cls_emb.weight [1, D] (ViT; lm_head = classifier, V = classes)

Hugging Face-format checkpoint folders are read and written by :mod:`growth.hf`; growth targets (the grown
model's config and its family's rules) are :mod:`growth.targets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHS",
    "ModelConfig",
    "Transformer",
    "forward_flops_per_token",
]

Arch = Literal["gpt2", "bert", "llama", "vit"]
ARCHS: tuple[str, ...] = ("gpt2", "bert", "llama", "vit")


@dataclass
class ModelConfig:
    """Shape and family of a transformer. Family-specific choices (norm, MLP, positions) are derived."""

    arch: Arch = field(
        default="gpt2", metadata={"help": "family: gpt2 (decoder) | bert (encoder, MLM) | llama | vit (images)"}
    )
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
    pooler: bool = field(default=False, metadata={"help": "bert: the folder has a pooler (dense + tanh on [CLS])"})
    encoder_only: bool = field(
        default=False, metadata={"help": "bert: the folder has no MLM head (a BertModel); written back the same way"}
    )
    image_size: int = field(default=0, metadata={"help": "vit: input image side in pixels"})
    patch_size: int = field(default=0, metadata={"help": "vit: patch side in pixels"})
    num_channels: int = field(default=3, metadata={"help": "vit: image channels"})

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
        if self.arch == "vit":
            if self.patch_size < 1 or self.image_size % self.patch_size:
                raise ValueError(f"vit: patch_size={self.patch_size} must divide image_size={self.image_size}")
            if self.tie_embeddings:
                raise ValueError("vit: the classifier is never tied to an embedding; set tie_embeddings=false")
            if self.max_seq_len != self.n_patches + 1:
                raise ValueError(
                    f"vit: positions={self.max_seq_len} must be patches + 1 = {self.n_patches + 1} "
                    f"(image_size {self.image_size}, patch_size {self.patch_size})"
                )

    # -- derived --------------------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def dh(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2 if self.arch == "vit" else 0

    @property
    def causal(self) -> bool:
        return self.arch in ("gpt2", "llama")

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
    def objective(self) -> Literal["clm", "mlm", "cls"]:
        return {"bert": "mlm", "vit": "cls"}.get(self.arch, "clm")


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
    if cfg.arch in ("bert", "vit"):
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
        if cfg.arch in ("bert", "vit"):
            self.lm_head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        if cfg.pooler:  # carried for the folder (BertModel's pooled output); the MLM loss does not read it
            self.pooler = nn.Linear(D, D)
        if cfg.arch == "vit":
            del self.tok_emb  # images: patches, not tokens
            self.patch_emb = nn.Linear(cfg.num_channels * cfg.patch_size**2, D)
            self.cls_emb = nn.Embedding(1, D)
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

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, C, H, W] -> patches [B, N, C*p*p] in the order of a stride-p convolution's weight."""
        p = self.cfg.patch_size
        B, C, H, W = pixels.shape
        x = pixels.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # [B, H/p, W/p, C, p, p]
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """ViT: pixels [B, C, H, W] -> class logits [B, V] (classifier on the final class token)."""
        cfg = self.cfg
        if tuple(pixels.shape[1:]) != (cfg.num_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"vit expects images [B, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}], got "
                f"{tuple(pixels.shape)}"
            )
        x = self.patch_emb(self.patchify(pixels))  # [B, N, D]
        x = torch.cat([self.cls_emb.weight.expand(len(x), 1, -1), x], dim=1) + self.pos_emb.weight  # [B, N+1, D]
        for layer in self.layers:
            x = layer(x)
        x = self.final_norm(x)[:, 0]  # [B, D]
        return F.linear(x, self.lm_head.weight, self.lm_head_bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.arch == "vit":
            return self.forward_images(ids)
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
    if cfg.arch == "vit":
        head = D * cfg.vocab_size / seq_len + D * cfg.num_channels * cfg.patch_size**2  # class token only
    return 2.0 * (L * (attn + mlp) + head) + 2.0 * L * seq_len * cfg.n_heads * cfg.dh
