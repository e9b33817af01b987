"""Hugging Face parameter names <-> the canonical names of :class:`growth.models.Transformer`, per family.

:func:`_hf_to_canonical` reads a checkpoint's state dict (GPT-2 Conv1D weights transposed, fused q/k/v split);
:func:`_canonical_to_hf` writes one back in the layout ``transformers`` loads. Folder I/O is :mod:`growth.hf`'s.
"""

from __future__ import annotations

import torch

from growth.models import ModelConfig

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
_VIT_LAYER = {
    "q": "attention.attention.query",
    "k": "attention.attention.key",
    "v": "attention.attention.value",
    "o": "attention.output.dense",
    "attn_norm": "layernorm_before",
    "up": "intermediate.dense",
    "down": "output.dense",
    "mlp_norm": "layernorm_after",
}


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
        if cfg.pooler:
            out["pooler.weight"], out["pooler.bias"] = sd["pooler.dense.weight"], sd["pooler.dense.bias"]
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
    elif cfg.arch == "vit":
        sd = _strip(sd, ("vit.",))
        e = "embeddings."
        out["cls_emb.weight"] = sd[e + "cls_token"].reshape(1, D)
        out["pos_emb.weight"] = sd[e + "position_embeddings"].reshape(-1, D)
        out["patch_emb.weight"] = sd[e + "patch_embeddings.projection.weight"].reshape(D, -1)  # [D, C*p*p]
        out["patch_emb.bias"] = sd[e + "patch_embeddings.projection.bias"]
        for i in range(cfg.n_layers):
            p, c = f"encoder.layer.{i}.", f"layers.{i}."
            for n, h in _VIT_LAYER.items():
                out[c + f"{n}.weight"], out[c + f"{n}.bias"] = sd[p + h + ".weight"], sd[p + h + ".bias"]
        out["final_norm.weight"], out["final_norm.bias"] = sd["layernorm.weight"], sd["layernorm.bias"]
        out["lm_head.weight"], out["lm_head_bias"] = sd["classifier.weight"], sd["classifier.bias"]
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
    elif cfg.arch == "vit":
        e, D = "vit.embeddings.", cfg.d_model
        out[e + "cls_token"] = sd["cls_emb.weight"].reshape(1, 1, D)
        out[e + "position_embeddings"] = sd["pos_emb.weight"][None]
        out[e + "patch_embeddings.projection.weight"] = sd["patch_emb.weight"].reshape(
            D, cfg.num_channels, cfg.patch_size, cfg.patch_size
        )
        out[e + "patch_embeddings.projection.bias"] = sd["patch_emb.bias"]
        for i in range(cfg.n_layers):
            p, c = f"vit.encoder.layer.{i}.", f"layers.{i}."
            for n, h in _VIT_LAYER.items():
                out[p + h + ".weight"], out[p + h + ".bias"] = sd[c + f"{n}.weight"], sd[c + f"{n}.bias"]
        out["vit.layernorm.weight"], out["vit.layernorm.bias"] = sd["final_norm.weight"], sd["final_norm.bias"]
        out["classifier.weight"], out["classifier.bias"] = sd["lm_head.weight"], sd["lm_head_bias"]
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
        if cfg.pooler:
            out["bert.pooler.dense.weight"], out["bert.pooler.dense.bias"] = sd["pooler.weight"], sd["pooler.bias"]
        if cfg.encoder_only:  # the source was a BertModel (e.g. a sentence encoder): same layout, no MLM head
            out = {k.removeprefix("bert."): v for k, v in out.items()}
        else:
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
