"""Which tensors get which treatment: decided by module type and shape, never by name substrings.

* Low-rank methods (GaLore, APOLLO, APOLLO-Mini, Flora): the weights of ``nn.Linear``, of transformers'
  ``Conv1D`` (GPT-2's layers: a Linear stored as (in, out); projected as stored, which is what the reference
  packages do with it) and ``nn.Conv*`` modules (conv kernels viewed as (out, in * prod(kernel)) matrices) and
  the fused ``in_proj_weight`` of ``nn.MultiheadAttention``. With ``target="blocks"`` only those inside a
  repeated block, i.e. below an ``nn.ModuleList`` (transformer layers, UNet down/up blocks); with
  ``target="all_linear"`` all of them. Never an embedding matrix, nor a weight tied to one (GPT-2's lm_head is
  its token embedding). Embeddings, output heads outside the blocks, norms and biases stay full-rank.
* Adam-mini blocks (one second moment per block): query/key weights one per head, other Linear/conv
  weights and embeddings one per output row, biases one per element, anything else one per tensor.
"""

from __future__ import annotations

import sys
from typing import Literal

import torch
from torch import nn

__all__ = ["low_rank_params", "adam_mini_blocks", "HEAD_COUNT_ATTRS", "QK_CHILD_NAMES"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# attention modules are recognised by their query child and sized by a head count, a head size or an HF config
HEAD_COUNT_ATTRS = ("num_heads", "n_heads", "n_head", "heads", "num_attention_heads")
# the query/key projections of an attention module, matched exactly on the child's own attribute name
QK_CHILD_NAMES = frozenset({"q", "k", "q_proj", "k_proj", "wq", "wk", "query", "key", "to_q", "to_k"})


def _inside_block(path: tuple[nn.Module, ...]) -> bool:
    return any(isinstance(m, nn.ModuleList) for m in path)


def _walk(model: nn.Module, parents: tuple[nn.Module, ...] = ()):
    yield model, parents
    for child in model.children():
        yield from _walk(child, parents + (model,))


def linear_like_types() -> tuple[type, ...]:
    """``nn.Linear`` and, where transformers is loaded, its ``Conv1D`` (only a model built from it has one)."""
    hf = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(hf, "Conv1D", None)
    return (nn.Linear, conv1d) if isinstance(conv1d, type) else (nn.Linear,)


def low_rank_params(
    model: nn.Module, target: Literal["blocks", "all_linear"] = "blocks", include_conv: bool = True
) -> set[int]:
    """ids of the parameters that get the low-rank treatment (see the module docstring)."""
    chosen: set[int] = set()
    linear = linear_like_types()
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for mod, parents in _walk(model):
        if target == "blocks" and not _inside_block(parents):
            continue
        weights: list[torch.Tensor] = []
        if isinstance(mod, linear):
            weights.append(mod.weight)
        elif include_conv and isinstance(mod, _CONV):
            weights.append(mod.weight)
        elif isinstance(mod, nn.MultiheadAttention) and mod.in_proj_weight is not None:
            weights.append(mod.in_proj_weight)
        for w in weights:
            if (
                w is not None
                and id(w) not in embeddings
                and w.requires_grad
                and w.ndim >= 2
                and min(w.shape[0], w[0].numel()) > 1
                and w.is_contiguous()
            ):
                chosen.add(id(w))
    return chosen


def _head_count(mod: nn.Module) -> int | None:
    for attr in HEAD_COUNT_ATTRS:
        v = getattr(mod, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _head_dim(mod: nn.Module, q: nn.Linear) -> int | None:
    """The per-head size of an attention module, from its own description: a ``head_dim`` or
    ``attention_head_size`` attribute (transformers' Llama/BERT), a head count (``num_heads``, ...), or its HF
    ``config`` (``head_dim``, else ``hidden_size / num_attention_heads``)."""
    for attr in ("head_dim", "attention_head_size"):
        v = getattr(mod, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    heads = _head_count(mod)
    if heads is None:
        cfg = getattr(mod, "config", None)
        explicit = getattr(cfg, "head_dim", None)
        if isinstance(explicit, int) and explicit > 0:
            return explicit
        heads = getattr(cfg, "num_attention_heads", None)
    if isinstance(heads, int) and heads > 0 and q.out_features % heads == 0:
        return q.out_features // heads
    return None


def adam_mini_blocks(model: nn.Module) -> dict[int, int | torch.Tensor]:
    """id(param) -> number of second-moment blocks (rows of the (blocks, -1) view of the parameter), or, for
    transformers' ``Conv1D`` (stored (in, out)), a segment id per output column.

    Adam-mini (Zhang et al. 2024, Sec. 2.3) partitions by the Hessian's block structure: query/key one
    block per head (the key's key/value heads under grouped-query attention), value/output/MLP/embedding/
    output head one per output row, biases one per element (plain Adam), everything else (norm gains, ...)
    one block for the whole tensor. GPT-2's fused ``c_attn`` (q, k, v side by side in the columns) gets q and
    k per head and v per output column.
    """
    blocks: dict[int, int | torch.Tensor] = {}
    conv1d = linear_like_types()[1:]
    for mod in model.modules():
        blocks.update(_conv1d_attention_segments(mod, conv1d))
        linears = {n: c for n, c in mod.named_children() if isinstance(c, nn.Linear)}
        q = next((c for n, c in linears.items() if n in ("q", "q_proj", "wq", "query", "to_q")), None)
        head_dim = _head_dim(mod, q) if q is not None else None
        for name, lin in linears.items():  # query and key (grouped-query: its key/value heads) one block per head
            if name in QK_CHILD_NAMES and head_dim and lin.out_features % head_dim == 0:
                blocks.setdefault(id(lin.weight), lin.out_features // head_dim)
        if isinstance(mod, nn.MultiheadAttention) and mod.in_proj_weight is not None:
            blocks.setdefault(id(mod.in_proj_weight), 3 * mod.num_heads)  # q, k and v: one block per head
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in blocks:
                continue
            if pname.endswith("bias"):
                blocks[id(p)] = p.numel()
            elif conv1d and isinstance(mod, conv1d) and p.ndim == 2:
                blocks[id(p)] = torch.arange(p.shape[1])  # one block per output neuron: a column of (in, out)
            elif isinstance(mod, (nn.Linear, nn.Embedding, *_CONV)) or (
                isinstance(mod, nn.MultiheadAttention) and p.ndim == 2
            ):
                blocks[id(p)] = p.shape[0]
            else:
                blocks[id(p)] = 1
    return blocks


def _conv1d_attention_segments(mod: nn.Module, conv1d: tuple[type, ...]) -> dict[int, torch.Tensor]:
    """GPT-2-style attention (``c_attn``, and ``q_attn`` under cross-attention, as ``Conv1D``): column segment ids
    with q and k one block per head and v one per output column."""
    c_attn = getattr(mod, "c_attn", None)
    if not conv1d or not isinstance(c_attn, conv1d):
        return {}
    width, heads = getattr(mod, "embed_dim", None), _head_count(mod)
    if not isinstance(width, int) or not heads or width % heads:
        return {}
    per_head = torch.arange(width) // (width // heads)  # [width]: head of each q (or k) column
    out: dict[int, torch.Tensor] = {}
    if getattr(mod, "is_cross_attention", False):
        q_attn = getattr(mod, "q_attn", None)
        if isinstance(q_attn, conv1d) and q_attn.weight.shape[1] == width:
            out[id(q_attn.weight)] = per_head
        parts = [per_head, heads + torch.arange(width)]  # k per head, v per column
    else:
        parts = [per_head, heads + per_head, 2 * heads + torch.arange(width)]  # q, k per head; v per column
    seg = torch.cat(parts)
    if c_attn.weight.shape[1] == len(seg):
        out[id(c_attn.weight)] = seg
    return out
