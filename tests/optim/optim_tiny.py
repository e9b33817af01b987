"""A tiny GPT and helpers shared by the optimizer tests (names follow the reference packages' rules)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, DIM, HEADS, FFN, SEQ, BATCH = 96, 16, 2, 64, 8, 4


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, self.n_heads, -1).transpose(1, 2) for f in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(DIM)
        self.attn = Attention(DIM, HEADS)
        self.norm2 = nn.RMSNorm(DIM)
        self.mlp = MLP(DIM, FFN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(layers))
        self.norm_f = nn.RMSNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.norm_f(x))


def make_pair(seed: int = 0) -> tuple[TinyGPT, TinyGPT]:
    torch.manual_seed(seed)
    a = TinyGPT()
    with torch.no_grad():  # non-trivial norm gains and biases
        for p in a.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return a, copy.deepcopy(a)


def batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g) for _ in range(n)]


def loss_fn(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


def train(model: nn.Module, opt: torch.optim.Optimizer, data: list[torch.Tensor]) -> None:
    for batch in data:
        loss_fn(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def max_rel_diff(a: nn.Module, b: nn.Module) -> float:
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters()):
        worst = max(worst, ((pa - pb).norm() / pb.norm().clamp_min(1e-12)).item())
    return worst


def mirror_groups(groups: list[dict], src: nn.Module, dst: nn.Module) -> list[dict]:
    """``groups`` (over src's parameters) re-expressed over dst's corresponding parameters."""
    index = {id(p): i for i, p in enumerate(src.parameters())}
    dst_params = list(dst.parameters())
    return [{**g, "params": [dst_params[index[id(p)]] for p in g["params"]]} for g in groups]
