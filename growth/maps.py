"""Initial growth maps: Net2Net selections and the function-preserving ("lossless") start of LiGO.

LiGO (Wang et al., ICLR 2023, https://arxiv.org/abs/2303.00980, App. A) starts its operator from a growth
rule. Two rules live here, both as pure functions returning the operator matrices ``[n_new, n_old]``:

- Net2Net (Chen et al., https://arxiv.org/abs/1511.05641): a new unit copies old unit ``i mod n``, readers
  split their weight over the copies. Exact when the residual width is a whole multiple of the source's;
  depth then starts by stacking, which is not function-preserving.
- The function-preserving start (as lossless growth does: LEMON, Wang et al., ICLR 2024; MSG, Yao et al.,
  ICLR 2024): every new unit's *output* starts at exactly zero, so the grown model computes the source's
  function for any width and depth (pre-norm families). The math, eq. (P1)-(P4) below, is in
  :func:`residual_maps`, :func:`zero_output_maps`, :func:`identity_depth`.
"""

from __future__ import annotations

import math

import torch

from growth.models import ModelConfig

__all__ = [
    "copy_map",
    "depth_map",
    "selection",
    "normalised_selection",
    "attention_maps",
    "rms_gain_scale",
    "padded_norm_eps",
    "residual_maps",
    "zero_output_maps",
    "identity_depth",
    "OUTPUT_KEYS",
]


def copy_map(n_old: int, n_new: int) -> torch.Tensor:
    """src[i] = i mod n_old: new unit i copies old unit src[i] (first n_old are the originals). [n_new]"""
    if n_new < n_old:
        raise ValueError(f"cannot shrink {n_old} -> {n_new}")
    return torch.arange(n_new) % n_old


def depth_map(n_old: int, n_new: int, kind: str = "stack") -> torch.Tensor:
    """Which small layer each large layer starts from: stacking (i mod L) or interpolation (floor(i L / L'))
    (paper App. A: both are special cases of the depth operator). [n_new]"""
    if kind == "interpolate":
        return torch.arange(n_new) * n_old // n_new
    return copy_map(n_old, n_new)


def selection(src: torch.Tensor, n_old: int) -> torch.Tensor:
    """One-hot S [n_new, n_old] with S[i, src[i]] = 1 (the out-operator of Net2Net)."""
    S = torch.zeros(len(src), n_old)
    S[torch.arange(len(src)), src] = 1.0
    return S


def normalised_selection(src: torch.Tensor, n_old: int) -> torch.Tensor:
    """S~ = S diag(1/c) with c the copy count of each old unit, so S~^T S = I (Net2Net fan-out split)."""
    counts = torch.bincount(src, minlength=n_old).float()
    return selection(src, n_old) / counts[src][:, None]


def attention_maps(src: ModelConfig, tgt: ModelConfig, zero_new_heads: bool = False) -> dict[str, torch.Tensor]:
    """Function-preserving q/k/v/o_in selection matrices for head-aware attention growth.

    New query head j copies old head j mod H; within a head, feature e copies e mod dh. kv head t copies
    the old kv head that its query heads read, which requires the copy to be consistent across the group.
    q gets sqrt(dh'/dh) and k 1/c_d so that q'.k'/sqrt(dh') = q.k/sqrt(dh); o's input divides by the
    copy count of (head, feature) (Net2Net), or, with ``zero_new_heads``, reads only the original heads
    (j < H): a copied head starts with zero output weights.
    """
    H1, H2, K1, K2, d1, d2 = src.n_heads, tgt.n_heads, src.kv_heads, tgt.kv_heads, src.dh, tgt.dh
    g1, g2 = H1 // K1, H2 // K2
    src_h = copy_map(H1, H2)  # [H2]
    src_d = copy_map(d1, d2)  # [d2]
    src_kv = torch.empty(K2, dtype=torch.long)
    for t in range(K2):
        olds = {int(src_h[j]) // g1 for j in range(t * g2, (t + 1) * g2)}
        if len(olds) != 1:
            raise ValueError(
                f"kv_heads={K2} with heads={H2} cannot copy the source's grouping ({H1} heads, "
                f"{K1} kv heads): keep heads/kv_heads = {g1}, e.g. kv_heads={H2 // g1}"
            )
        src_kv[t] = olds.pop()
    c_h = torch.bincount(src_h, minlength=H1).float()
    w_h = (torch.arange(H2) < H1).float() if zero_new_heads else 1.0 / c_h[src_h]  # o's weight per head [H2]
    c_d = torch.bincount(src_d, minlength=d1).float()

    def flat(heads: torch.Tensor) -> torch.Tensor:  # (head, feature) -> flat old index [n_heads * d2]
        return (heads[:, None] * d1 + src_d[None, :]).reshape(-1)

    q_src, kv_src = flat(src_h), flat(src_kv)
    q = selection(q_src, H1 * d1) * math.sqrt(d2 / d1)
    k = selection(kv_src, K1 * d1) / c_d[src_d].repeat(K2)[:, None]
    v = selection(kv_src, K1 * d1)
    o_in = selection(q_src, H1 * d1) * (w_h[:, None] / c_d[src_d][None, :]).reshape(-1)[:, None]
    return {
        "q": q,
        "k": k,
        "v": v,
        "o_in": o_in,
        "head_q": selection(src_h, H1),
        "head_kv": selection(src_kv, K1),
        "head_o_in": selection(src_h, H1) * w_h[:, None],
    }


# ---------------------------------------------------------------------------------------------------------
# the function-preserving start


def rms_gain_scale(d_old: int, d_new: int) -> float:
    """(P1) Gain factor that keeps RMSNorm/LayerNorm outputs when D old dims are padded to D' dims.

    RMSNorm with x' = [x; 0]:  ms(x') = (1/D') sum_i x_i^2 = (D/D') ms(x), so
    x'/rms(x') = sqrt(D'/D) [x/rms(x); 0]  and  g' = sqrt(D/D') g  restores the old outputs.
    LayerNorm with x' = [x; mu 1]: mu' = mu, var' = (1/D') sum_i (x_i - mu)^2 = (D/D') var: the same factor.
    With eps: sqrt(ms(x') + eps') = sqrt(D/D') sqrt(ms(x) + eps) needs eps' = eps D/D' (:func:`padded_norm_eps`;
    with eps kept the relative deviation is eps (D'/D - 1) / (2 ms(x)), 5e-4 on a tiny random model).
    """
    return math.sqrt(d_old / d_new)


def padded_norm_eps(eps: float, d_old: int, d_new: int) -> float:
    """(P1') The norm epsilon of a padded residual stream: eps D/D' keeps (P1) exact (whole multiples: eps)."""
    return eps if d_new % d_old == 0 else eps * d_old / d_new


def residual_maps(src: ModelConfig, tgt: ModelConfig) -> tuple[str, dict[str, torch.Tensor]]:
    """(P2) Residual-stream operators of the function-preserving start: ("copy" | "pad", {emb_out, emb_in,
    norm_w, norm_b}), each [D', D].

    copy (D' = k D, any norm): writers copy every dim k times (emb_out = S), which keeps the mean and mean
        square, so norm outputs are copies too (norm_w = norm_b = S); readers read only the originals
        (emb_in = [I; 0]). The copies are not read yet; their readers' zero columns get gradient g x_new^T.
    pad (any D' > D, pre-norm): new dims hold 0 (RMSNorm: emb_out = [I; 0]) or the mean of the old dims
        (LayerNorm: emb_out = [I; 1^T / D], so mu' = mu); gains get (P1) (norm_w = sqrt(D/D') S, the new gains
        nonzero so dL/dx_new != 0), norm biases [I; 0] so normalised new dims are 0; readers' new columns copy
        their source dim (emb_in = S): they read 0 now, and being nonzero they pass gradient to the writers'
        new rows (with both sides zero the new dims would be a saddle that never moves).
    Post-LN (BERT) layers write the normalised stream itself, so the new dims cannot hold the mean: pad raises.
    """
    D1, D2 = src.d_model, tgt.d_model
    S = selection(copy_map(D1, D2), D1)  # [D2, D1]
    eye = torch.eye(D2, D1)  # [I; 0]
    if D2 % D1 == 0:
        return "copy", {"emb_out": S, "emb_in": eye, "norm_w": S.clone(), "norm_b": S.clone()}
    if src.post_ln:
        raise ValueError(
            f"a function-preserving start for {src.arch} (post-LayerNorm) needs d_model a multiple of "
            f"{D1} (got {D2}); pass such a d_model, or ligo.width_init=net2net (approximate)"
        )
    out = eye.clone()
    if src.arch != "llama":  # LayerNorm: new dims carry the mean of the old ones
        out[D1:] = 1.0 / D1
    norm_w = S * rms_gain_scale(D1, D2)
    return "pad", {"emb_out": out, "emb_in": S, "norm_w": norm_w, "norm_b": eye.clone()}


def zero_output_maps(n_old: int, n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P3) A hidden space (FFN units) grown with zero-output copies: (out, in) operators [n_new, n_old].

    New unit i reads like old unit i mod n (out = S: same input weights) and writes nothing (in = [I; 0]).
    Exact for any ratio; unlike Net2Net's equal fan-out split, copy and original get different gradients
    (only the copy's output weights are zero), so training separates them without noise.
    """
    return selection(copy_map(n_old, n_new), n_old), torch.eye(n_new, n_old)


# per-layer parameters that write into the residual stream: zero in a new identity block
OUTPUT_KEYS = ("o.weight", "o.bias", "down.weight", "down.bias")


def identity_depth(n_old: int, n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P4) Depth coefficients [L', L] of new layers as exact identity blocks, interleaved.

    Large layer i starts from small layer floor(i L / L') (the first of each run is that layer itself); the
    later ones are new blocks that copy its inputs (q/k/v, norms, up/gate: ``inputs``) and whose output
    projections are zero (o, down: ``outputs``), so a pre-norm block computes x + 0 = x. Interleaving spreads
    the new capacity over the depth, next to the layer each new block starts from. The zero outputs get
    gradient <dL/dW_o, W_o,j> != 0 at once; the new block's input coefficients get exactly zero gradient at the
    first step (their path is multiplied by the zero output) and learn once the outputs have moved.
    """
    src = depth_map(n_old, n_new, "interpolate")  # [L']
    inputs = selection(src, n_old)
    first = torch.ones(n_new, dtype=torch.bool)
    first[1:] = src[1:] != src[:-1]
    return inputs, inputs * first[:, None]
