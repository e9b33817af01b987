"""LiGO: Learning to Grow Pretrained Models for Efficient Transformer Training (Wang et al., ICLR 2023),
https://arxiv.org/abs/2303.00980.

Every weight of the large model is a linear function of the small model's weights (paper eq. 3-5):

    width  W'_j = B_out,j W_j B_in,j^T  (operators per channel space; the residual stream's are shared by all
                                         layers, q/k/v/o-in/FFN ones are per small layer j or shared)
    depth  W''_i = sum_j w_ij W'_j      (one coefficient matrix w in R^{L2 x L1} per parameter type)

Channel spaces and the operators acting on them (``out`` expands rows, ``in`` expands columns):

    emb    residual stream: embeddings, norms, o/down outputs (``emb_out``);
           q/k/v/up/gate/head inputs (``emb_in``)
    q, k   query / key features                      (``q``, ``k``: outputs only; they meet in q.k)
    v      value features (kv-head space)            (``v``) and the o input in query-head space (``o_in``)
    ffn    MLP hidden: up and gate outputs (``ffn_out``, shared, SwiGLU-safe); down input (``ffn_in``)

Net2Net as a special case of LiGO (paper App. A: B = [I; S], A = [I; S~]) gives the initialisation: a new
unit copies old unit ``i mod n`` (``out`` = selection S), readers of a copied unit divide by its copy count
(``in`` = S~ = S diag(1/c)), so S~^T S = I and the widened model computes the same function (exactly when
every unit is copied equally, since LayerNorm/RMSNorm statistics then stay the same). Attention is
head-aware: heads are copied whole, q is scaled by sqrt(dh'/dh) and k divided by within-head copy counts so
that scaled dot products are unchanged. Depth starts as stacking (large layer i = small layer i mod L1).
Small noise on the ``out`` operators breaks the symmetry between copies.

Function-preserving start (``depth_init=identity``, ``width_init=preserve``; :mod:`growth.maps` eq. P1-P4): new
units copy an old unit's inputs and write nothing (zero output rows), the residual stream is copied (whole
multiples) or padded with zeros (RMSNorm; the mean for LayerNorm) with norm gains scaled by sqrt(D/D'), and new
layers are identity blocks (zero o/down) interleaved after the layer they copy: the grown model computes the
source's function for any width and depth, and noise goes only where nothing reads it yet.

Longer context: a learned position table grown from P to P' > P rows gets row p = source row p mod P (the table
tiled, as Longformer extended RoBERTa's positions, Beltagy et al. 2020 §5); it is a fixed selection ``pos``,
not learned. RoPE models have no table and keep their rotary base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from genai_train.optim import OptimConfig, build_optimizer
from growth.maps import (
    OUTPUT_KEYS,
    attention_maps,
    copy_map,
    depth_map,
    identity_depth,
    normalised_selection,
    residual_maps,
    selection,
    zero_output_maps,
)
from growth.models import ModelConfig, Transformer

__all__ = [
    "LigoConfig",
    "LigoOperator",
    "param_role",
    "copy_map",
    "depth_map",
    "selection",
    "normalised_selection",
    "attention_maps",
    "materialize",
    "operator_optimizer",
    "resolve_init",
]


@dataclass
class LigoConfig:
    """Operator phase: how the operator is initialised and trained (paper: 100 steps)."""

    steps: int = field(default=100, metadata={"help": "operator training steps before materializing"})
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.0),
        metadata={"help": "optimizer of the operator (genai_train.optim; weight decay 0 keeps it near its init)"},
    )
    warmup_steps: int | None = field(
        default=None,
        metadata={
            "help": "linear warm-up of the operator LR; None = 10% of steps; must be shorter than steps "
            "(the official 10k warm-up over 100 steps leaves the operator at its init)"
        },
    )
    depth_lr: float | None = field(
        default=None,
        metadata={
            "help": "learning rate of the depth coefficients (None = ligo.optim.lr); they are O(1) mixing weights, and "
            "undoing the loss jump of stacking needs them to move by ~0.5 within the phase"
        },
    )
    grad_clip: float = field(default=1.0, metadata={"help": "clip the operator gradient norm (0: off)"})
    noise: float = field(
        default=0.01,
        metadata={"help": "std of symmetry-breaking noise on out-operators, relative to a row (0: exact copies)"},
    )
    attn_operator: Literal["auto", "full", "head"] = field(
        default="auto",
        metadata={
            "help": "q/k/v operators: full (any feature mix, paper) | head (mix whole heads, kron(H, I)); "
            "auto = head for RoPE models"
        },
    )
    per_layer: bool = field(
        default=True,
        metadata={
            "help": "q/k/v/o-in/FFN width operators per small layer (paper) instead of one shared by all layers; "
            "the residual-stream operators are always shared"
        },
    )
    train_width: bool = field(default=True, metadata={"help": "learn the width operators"})
    train_depth: bool = field(default=True, metadata={"help": "learn the depth coefficients"})
    depth_init: Literal["auto", "identity", "stack", "interpolate"] = field(
        default="auto",
        metadata={
            "help": "identity: new layers are exact identity blocks (zero o/down) interleaved after the layer "
            "they copy; stack: large layer i copies small layer i mod L (StackBERT, the paper's); interpolate: "
            "floor(i L / L'); auto = stack when the depth is a whole multiple (or post-LN), else identity"
        },
    )
    width_init: Literal["auto", "preserve", "net2net"] = field(
        default="auto",
        metadata={
            "help": "preserve: new units start with zero outputs (exact for any width); net2net: copies with "
            "split fan-out + noise on the copies (exact only for whole multiples, noise 0); auto = preserve "
            "with identity depth, else net2net"
        },
    )

    @property
    def resolved_warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else self.steps // 10

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"ligo.steps={self.steps} must be >= 0")
        if self.depth_lr is not None and not self.depth_lr > 0:
            raise ValueError(f"ligo.depth_lr={self.depth_lr} must be > 0 (or null to use ligo.optim.lr)")
        if self.warmup_steps is not None and self.steps and not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"ligo.warmup_steps={self.warmup_steps} must be < ligo.steps={self.steps}, or the "
                f"operator never trains at its full LR; e.g. --ligo.warmup_steps={self.steps // 10}"
            )
        if self.noise < 0:
            raise ValueError(f"ligo.noise={self.noise} must be >= 0")


def resolve_init(cfg: LigoConfig, src: ModelConfig, tgt: ModelConfig) -> tuple[str, str]:
    """(depth_init, width_init) with ``auto`` resolved. The rule: a whole-multiple depth keeps the paper's
    stacking + Net2Net start (every large layer a full copy); any other depth (e.g. SmolLM2 30 -> 32 layers,
    where a partial stack duplicates two layers and nearly doubles the loss) starts function-preserving.
    Post-LN blocks normalise the stream, so an identity block is impossible there (identity raises)."""
    depth = cfg.depth_init
    if depth == "auto":
        depth = "stack" if tgt.n_layers % src.n_layers == 0 or src.post_ln else "identity"
    if depth == "identity" and src.post_ln and tgt.n_layers > src.n_layers:
        raise ValueError(
            f"ligo.depth_init=identity: a post-LayerNorm ({src.arch}) block renormalises its input, so a new "
            f"block cannot be an exact identity; use ligo.depth_init=stack or interpolate"
        )
    width = cfg.width_init
    if width == "auto":
        width = "preserve" if depth == "identity" else "net2net"
    return depth, width


# ---------------------------------------------------------------------------------------------------------
# parameter roles
_NORMS = ("emb_norm", "attn_norm", "mlp_norm")


def param_role(name: str, cfg: ModelConfig, residual: str = "net2net") -> tuple[str | None, ...]:
    """Operators applied to each axis of canonical parameter ``name``: W' = op0 W op1^T (None = unchanged).

    The final/head norm output is read by the head; with tied embeddings the head is E' = E B_emb^T, so
    that norm uses the in-operator (S~) to keep logits unchanged. ``residual`` is the residual-stream init:
    net2net, or copy / pad of the function-preserving start, where norm gains and biases get their own
    operators (``norm_w``, ``norm_b``: eq. P1-P2 of :mod:`growth.maps`).
    """
    suffix = name.split(".", 2)[-1] if name.startswith("layers.") else name
    tied_reader = "emb_in" if cfg.tie_embeddings else "emb_out"
    if residual != "net2net":
        module, _, kind = suffix.partition(".")  # copy + tied: the final norm keeps emb_in = [I; 0] (E S^T reads it)
        if module in _NORMS or (
            module in ("final_norm", "head_norm") and (residual == "pad" or not cfg.tie_embeddings)
        ):
            return ("norm_w" if kind == "weight" else "norm_b",)
    table: dict[str, tuple[str | None, ...]] = {
        "tok_emb.weight": (None, "emb_out"),
        "pos_emb.weight": ("pos", "emb_out"),
        "cls_emb.weight": (None, "emb_out"),
        "patch_emb.weight": ("emb_out", None),
        "patch_emb.bias": ("emb_out",),
        "pooler.weight": ("emb_out", "emb_in"),
        "pooler.bias": ("emb_out",),
        "type_emb.weight": (None, "emb_out"),
        "emb_norm.weight": ("emb_out",),
        "emb_norm.bias": ("emb_out",),
        "attn_norm.weight": ("emb_out",),
        "attn_norm.bias": ("emb_out",),
        "mlp_norm.weight": ("emb_out",),
        "mlp_norm.bias": ("emb_out",),
        "q.weight": ("q", "emb_in"),
        "q.bias": ("q",),
        "k.weight": ("k", "emb_in"),
        "k.bias": ("k",),
        "v.weight": ("v", "emb_in"),
        "v.bias": ("v",),
        "o.weight": ("emb_out", "o_in"),
        "o.bias": ("emb_out",),
        "up.weight": ("ffn_out", "emb_in"),
        "up.bias": ("ffn_out",),
        "gate.weight": ("ffn_out", "emb_in"),
        "gate.bias": ("ffn_out",),
        "down.weight": ("emb_out", "ffn_in"),
        "down.bias": ("emb_out",),
        "final_norm.weight": (tied_reader,),
        "final_norm.bias": (tied_reader,),
        "head_dense.weight": ("emb_out", "emb_in"),
        "head_dense.bias": ("emb_out",),
        "head_norm.weight": (tied_reader,),
        "head_norm.bias": (tied_reader,),
        "lm_head.weight": (None, "emb_in"),
        "lm_head_bias": (None,),
    }
    if suffix not in table:
        raise KeyError(f"no growth role for parameter {name!r}")
    return table[suffix]


# ---------------------------------------------------------------------------------------------------------
# the operator


class LigoOperator(nn.Module):
    """Learnable linear map from the small model's weights to the large model's weights.

    ``grow(small_state)`` returns the large state dict; it is linear in ``small_state`` (the operator's
    parameters are fixed while it runs). Only the operator's parameters are trainable; the small weights
    are held as plain (frozen) tensors.
    """

    def __init__(
        self,
        small: dict[str, torch.Tensor],
        src: ModelConfig,
        tgt: ModelConfig,
        cfg: LigoConfig | None = None,
        seed: int = 0,
    ):
        super().__init__()
        cfg = cfg or LigoConfig()
        if src.arch != tgt.arch or src.vocab_size != tgt.vocab_size:
            raise ValueError(
                f"source ({src.arch}, vocab {src.vocab_size}) and target ({tgt.arch}, vocab "
                f"{tgt.vocab_size}) must share family and vocabulary"
            )
        self.src, self.tgt, self.cfg = src, tgt, cfg
        self.head_structured = cfg.attn_operator == "head" or (cfg.attn_operator == "auto" and tgt.rope)
        if self.head_structured and src.dh != tgt.dh:
            raise ValueError(f"attn_operator=head keeps head_dim ({src.dh} -> {tgt.dh}); use attn_operator=full")
        self.small = {k: v.detach() for k, v in small.items()}
        g = torch.Generator().manual_seed(seed)

        self.depth_init, self.width_init = resolve_init(cfg, src, tgt)
        preserve = self.width_init == "preserve"

        # ---- width: init from Net2Net maps (noise on out-operators) or the function-preserving start
        D1, D2, F1, F2 = src.d_model, tgt.d_model, src.d_ff, tgt.d_ff
        src_emb, src_ffn = copy_map(D1, D2), copy_map(F1, F2)
        att = attention_maps(src, tgt, zero_new_heads=preserve)
        if preserve:  # eq. P2-P3: new units read like a copy and write nothing
            self.residual, init = residual_maps(src, tgt)
            if not any(k.endswith("norm.bias") for k in small):  # RMSNorm: no biases to grow
                del init["norm_b"]
            init["ffn_out"], init["ffn_in"] = zero_output_maps(F1, F2)
        else:
            self.residual = "net2net"
            init = {
                "emb_out": selection(src_emb, D1),
                "emb_in": normalised_selection(src_emb, D1),
                "ffn_out": selection(src_ffn, F1),
                "ffn_in": normalised_selection(src_ffn, F1),
            }
        if self.head_structured:
            init.update(q=att["head_q"], k=att["head_kv"], v=att["head_kv"], o_in=att["head_o_in"])
        else:
            init.update(q=att["q"], k=att["k"], v=att["v"], o_in=att["o_in"])
        noisy = self._noise_rows(init, preserve)
        self.per_layer = {n for n in init if cfg.per_layer and n not in ("emb_out", "emb_in", "norm_w", "norm_b")}
        # learned positions P -> P' rows: the table tiled (row p copies p mod P), fixed
        self.register_buffer("pos_map", copy_map(src.max_seq_len, tgt.max_seq_len), persistent=False)  # [P']
        self.width = nn.ParameterDict()
        for name, M in init.items():
            if name in self.per_layer:  # one copy per small layer, each with its own noise: [L1, n_new, n_old]
                M = M.expand(src.n_layers, *M.shape).clone()
            if name in noisy and cfg.noise > 0:
                eps = torch.randn(M.shape, generator=g) * (cfg.noise / math.sqrt(M.shape[-1])) * M.abs().max()
                M = M + eps * noisy[name][:, None]
            self.width[name] = nn.Parameter(M, requires_grad=cfg.train_width)

        # ---- depth: stacking / interpolation, or identity blocks (eq. P4: zero o/down coefficients)
        L1, L2 = src.n_layers, tgt.n_layers
        if self.depth_init == "identity":
            inputs, outputs = identity_depth(L1, L2)  # [L2, L1] each
        else:
            inputs = outputs = selection(depth_map(L1, L2, self.depth_init), L1)  # [L2, L1]
        self.layer_keys = sorted({k.split(".", 2)[2] for k in small if k.startswith("layers.")})
        self.depth = nn.ParameterDict(
            {
                k.replace(".", "__"): nn.Parameter(
                    (outputs if k in OUTPUT_KEYS else inputs).clone(), requires_grad=cfg.train_depth
                )
                for k in self.layer_keys
            }
        )
        self.top_keys = sorted(k for k in small if not k.startswith("layers."))
        self._stacked = self._stack(self.small)  # the frozen small layers, stacked once

    def _noise_rows(self, init: dict[str, torch.Tensor], preserve: bool) -> dict[str, torch.Tensor]:
        """Which rows of each out-operator get symmetry-breaking noise: every row (Net2Net), or, for the
        function-preserving start, only rows of new units whose output is still zero (new FFN units, new q
        heads, new kv heads: these are read only by new q heads, as GQA groups are copied whole). [n_new]"""
        rows = {n: torch.ones(len(init[n])) for n in ("emb_out", "ffn_out", "q", "k", "v")}
        if not preserve:
            return rows
        src, tgt = self.src, self.tgt
        per_head = 1 if self.head_structured else tgt.dh  # rows per head
        new = {"ffn_out": src.d_ff, "q": src.n_heads * per_head, "k": src.kv_heads * per_head}
        new["v"] = new["k"]
        return {n: (torch.arange(len(init[n])) >= first).float() for n, first in new.items()}

    def _stack(self, small: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-layer parameters of the small model stacked along a new layer axis: {key: [L1, ...]}."""
        return {
            key: torch.stack([small[f"layers.{j}.{key}"] for j in range(self.src.n_layers)]) for key in self.layer_keys
        }

    # -- operator matrices ----------------------------------------------------------------------------
    def matrix(self, name: str) -> torch.Tensor:
        """Dense operator for a channel space: [n_new, n_old], or [L1, n_new, n_old] when per layer."""
        M = self.width[name]
        if self.head_structured and name in ("q", "k", "v", "o_in"):
            # kron(H, I_dh) (batched over layers): whole heads mix, rotary pairs stay intact
            dh = self.src.dh
            eye = torch.eye(dh, device=M.device, dtype=M.dtype)
            K = M[..., :, None, :, None] * eye[:, None, :]
            return K.reshape(*M.shape[:-2], M.shape[-2] * dh, M.shape[-1] * dh)
        return M

    def _widen(self, W: torch.Tensor, role: tuple[str | None, ...], mats: dict[str, torch.Tensor]) -> torch.Tensor:
        """W [..., n0(, n1)] -> op0 W op1^T, batched over leading (layer) axes; an operator is [n_new, n_old]
        or, per layer, [L, n_new, n_old] matching W's leading axis."""
        nd = len(role)
        if role[0] is not None:
            M = mats[role[0]]
            if M.dtype == torch.long:  # a row selection (position tables): W'[i] = W[M[i]]
                W = W[M]
            else:
                W = torch.matmul(M, W) if nd == 2 else torch.matmul(M, W.unsqueeze(-1)).squeeze(-1)
        if nd == 2 and role[1] is not None:
            W = W @ mats[role[1]].transpose(-1, -2)
        return W

    def grow(self, small: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The large model's state dict, computed from ``small`` (default: the stored small weights)."""
        stacks = self._stacked if small is None else self._stack(small)
        small = self.small if small is None else small
        mats = {name: self.matrix(name) for name in self.width}
        mats["pos"] = self.pos_map
        out: dict[str, torch.Tensor] = {}
        for k in self.top_keys:
            out[k] = self._widen(small[k], param_role(k, self.tgt, self.residual), mats)
        for key in self.layer_keys:
            # width first (small layer j by its own operators), then depth: large layer i = sum_j w_ij W'_j
            role = param_role(f"layers.0.{key}", self.tgt, self.residual)
            widened = self._widen(stacks[key], role, mats)  # [L1, ...]
            w = self.depth[key.replace(".", "__")]  # [L2, L1]
            grown = torch.einsum("ij,j...->i...", w, widened)  # [L2, ...]
            for i in range(self.tgt.n_layers):
                out[f"layers.{i}.{key}"] = grown[i]
        return out

    def forward(self) -> dict[str, torch.Tensor]:
        return self.grow()

    def to(self, *args, **kwargs):  # the small weights are plain tensors: move them too
        super().to(*args, **kwargs)
        ref = next(iter(self.width.values()))
        self.small = {k: v.to(ref.device, ref.dtype) for k, v in self.small.items()}
        self._stacked = {k: v.to(ref.device, ref.dtype) for k, v in self._stacked.items()}
        return self

    def grow_flops(self) -> float:
        """FLOPs of one ``grow()``: the width matmuls (per small layer) + depth mixing (2 L2 L1 per grown
        element)."""
        total = 0.0
        shapes = {n: tuple(self.matrix(n).shape[-2:]) for n in self.width}
        L1, L2 = self.src.n_layers, self.tgt.n_layers
        for key in self.layer_keys + self.top_keys:
            t = self.small[f"layers.0.{key}"] if key in self.layer_keys else self.small[key]
            reps = L1 if key in self.layer_keys else 1
            role = param_role(f"layers.0.{key}" if key in self.layer_keys else key, self.tgt, self.residual)
            dims = list(t.shape)
            for axis, op in enumerate(role):
                if op is None or op == "pos":  # a row copy, no arithmetic
                    if op == "pos":
                        dims[axis] = len(self.pos_map)
                    continue
                n_new, n_old = shapes[op]
                other = math.prod(dims) // dims[axis]
                total += reps * 2.0 * n_new * n_old * other
                dims[axis] = n_new
            if key in self.layer_keys:
                total += 2.0 * L2 * L1 * math.prod(dims)
        return total


@torch.no_grad()
def materialize(op: LigoOperator, model: Transformer | None = None) -> Transformer:
    """Compute the large weights once and load them into ``model`` (a fresh target model by default)."""
    model = model if model is not None else Transformer(op.tgt)
    ref = next(iter(op.width.values()))
    model.to(ref.device)
    model.load_state_dict({k: v.detach().clone() for k, v in op.grow().items()}, strict=True)
    return model


def operator_optimizer(op: LigoOperator, cfg: LigoConfig) -> torch.optim.Optimizer:
    """``ligo.optim`` over the trainable operator, each of its parameter groups split in two: the width
    operators at ``ligo.optim.lr``, the depth coefficients at ``ligo.depth_lr`` (O(1) mixing weights that must
    move by ~0.5 within the phase)."""
    opt = build_optimizer(op.named_parameters(), cfg.optim, model=op)
    depth_lr = cfg.depth_lr if cfg.depth_lr is not None else cfg.optim.lr
    depth = {id(p) for p in op.depth.parameters()}
    groups = []
    for group in opt.param_groups:  # no step taken yet: regrouping moves no state
        for lr, is_depth in ((cfg.optim.lr, False), (depth_lr, True)):
            params = [p for p in group["params"] if (id(p) in depth) == is_depth]
            if params:
                groups.append({**group, "params": params, "lr": lr})
    opt.param_groups = groups
    return opt
