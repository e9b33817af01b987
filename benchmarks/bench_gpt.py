"""The optimizer benchmark's model and data: a GPT of 6 layers, d=512, 8 heads, FFN 2048, vocab 8192, learned
positions, RMSNorm, untied head, no biases (27.4M parameters), and CPython's standard-library sources as bytes."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, DIM, HEADS, FFN, LAYERS, CTX = 8192, 512, 8, 2048, 6, 128


# ---------------------------------------------------------------------------------------------- model
class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.n_heads = HEADS
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(DIM, DIM, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, HEADS, -1).transpose(1, 2) for f in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(DIM, FFN, bias=False), nn.Linear(FFN, DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.RMSNorm(DIM), Attention(), nn.RMSNorm(DIM), MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.pos_embed = nn.Embedding(VOCAB, DIM), nn.Embedding(CTX, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm_f, self.lm_head = nn.RMSNorm(DIM), nn.Linear(DIM, VOCAB, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx) + self.pos_embed(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.norm_f(x))


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


# ----------------------------------------------------------------------------------------------- data
def stdlib_corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of CPython's standard-library ``*.py`` files, split 95/5 by file (sorted paths)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    if not files:
        raise SystemExit(f"no *.py files under {root}: the benchmark needs CPython's standard-library sources")
    cut = int(len(files) * 0.95)

    def load(fs):
        return torch.frombuffer(bytearray(b"".join(f.read_bytes() for f in fs)), dtype=torch.uint8).long()

    return load(files[:cut]), load(files[cut:])


def sample_batch(data: torch.Tensor, batch: int, ctx: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, data.numel() - ctx - 1, (batch,), generator=gen)
    return torch.stack([data[s : s + ctx + 1] for s in starts.tolist()])
