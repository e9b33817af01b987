"""Growth targets: parse a target spec, derive the unset sizes from the source, check the family's growth rules.

:func:`target_config` is the grown model's :class:`~growth.models.ModelConfig`; every rule failure raises
:class:`TargetError` naming the rule and a valid choice.
"""

from __future__ import annotations

from dataclasses import replace

from growth.maps import padded_norm_eps
from growth.models import ModelConfig, _divisor_near

__all__ = ["TargetError", "check_target", "parse_target", "target_config"]


class TargetError(ValueError):
    """A growth target that breaks a rule of its family; the message names the rule and a valid choice."""


_TARGET_KEYS = {
    "layers": "n_layers",
    "d_model": "d_model",
    "heads": "n_heads",
    "kv_heads": "n_kv_heads",
    "ffn": "d_ff",
    "head_dim": "head_dim",
    "positions": "max_seq_len",
}
_KEY_OF = {v: k for k, v in _TARGET_KEYS.items()} | {"kv_heads": "kv_heads", "dh": "head_dim"}


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


def _derive(src: ModelConfig, want: dict, seq_len: int | None) -> ModelConfig:
    """Fill the unset sizes of ``want`` from the source (heads, kv heads and FFN scale with d_model)."""
    want = dict(want)
    D2 = want.get("d_model", src.d_model)
    if "n_heads" not in want:
        if src.rope and D2 % src.dh == 0:  # RoPE keeps head_dim: width comes as heads
            want["n_heads"] = D2 // src.dh
        elif (src.n_heads * D2) % src.d_model == 0:
            want["n_heads"] = src.n_heads * D2 // src.d_model
        else:
            want["n_heads"] = src.n_heads
    H2 = want["n_heads"]
    if "n_kv_heads" not in want:
        g1 = src.n_heads // src.kv_heads  # query heads per kv head, kept (GQA groups are copied whole)
        want["n_kv_heads"] = None if g1 == 1 else max(1, H2 // g1)
    if "d_ff" not in want:
        want["d_ff"] = max(src.d_ff, int(round(src.d_ff * D2 / src.d_model)))
    if "max_seq_len" not in want:  # context grows with the training windows (never shrinks)
        want["max_seq_len"] = max(src.max_seq_len, seq_len or 0) if src.arch != "vit" else src.max_seq_len
    if not src.post_ln:  # a padded stream keeps its norms exact with eps D/D' (growth.maps eq. P1')
        want.setdefault("norm_eps", padded_norm_eps(src.norm_eps, src.d_model, D2))
    if src.rope:
        want.setdefault("head_dim", src.dh)
    elif "head_dim" in want:
        if want["head_dim"] * H2 != D2:
            raise TargetError(
                f"target rule 'heads x head_dim = d_model' ({src.arch}): head_dim={want['head_dim']} * "
                f"heads={H2} != d_model={D2}; drop head_dim (it is d_model/heads) or pass "
                f"heads={D2 // want['head_dim'] if D2 % want['head_dim'] == 0 else H2}"
            )
        want["head_dim"] = None
    return replace(src, **want)


def check_target(src: ModelConfig, tgt: ModelConfig, seq_len: int | None = None) -> None:
    """The family's growth rules, each failure naming the rule and a valid choice (raises :class:`TargetError`).

    1. growth only enlarges (layers, d_model, heads, kv heads, FFN, head size, positions);
    2. heads divide d_model (transformers refuses anything else for every family);
    3. kv_heads divide heads, and every group of query heads reads one source kv head (GQA copies groups);
    4. head size: RoPE models keep head_dim (rotary pairs must not mix); others have head_dim = d_model/heads;
    5. positions: learned tables hold ``seq_len`` positions; ViT positions are fixed by the image and patch size;
    6. vocabulary (or classes) is the source's.
    """
    H2, D2 = tgt.n_heads, tgt.d_model
    for f in ("n_layers", "d_model", "n_heads", "kv_heads", "d_ff", "dh", "max_seq_len"):
        a, b = getattr(src, f), getattr(tgt, f)
        if b < a:
            key = _KEY_OF.get(f, f)
            raise TargetError(
                f"target {key}={b} is smaller than the source's {a}; growth only enlarges a model: pass {key} >= {a}"
            )
    if D2 % H2:
        good = [h for h in range(src.n_heads, D2 + 1) if D2 % h == 0 and (not src.rope or D2 // h == src.dh)]
        raise TargetError(
            f"target rule 'heads divide d_model': heads={H2} does not divide d_model={D2}; choose heads from "
            f"{good[:8]} or another d_model"
        )
    if tgt.kv_heads < 1 or H2 % tgt.kv_heads:
        raise TargetError(
            f"target rule 'kv_heads divide heads': kv_heads={tgt.kv_heads} does not divide heads={H2}; "
            f"e.g. kv_heads={_divisor_near(H2, tgt.kv_heads)}"
        )
    g1 = src.n_heads // src.kv_heads
    if src.kv_heads != src.n_heads and H2 // tgt.kv_heads != g1:
        raise TargetError(
            f"target rule 'kv_heads divide heads' (GQA groups are copied whole): heads/kv_heads must stay "
            f"{g1} as in the source ({src.n_heads}/{src.kv_heads}); "
            + (
                f"pass kv_heads={H2 // g1}"
                if H2 % g1 == 0
                else f"pass heads a multiple of {g1} (e.g. heads={-(-H2 // g1) * g1}, kv_heads={-(-H2 // g1)})"
            )
        )
    if src.rope and tgt.dh != src.dh:
        raise TargetError(
            f"target rule 'head size': {src.arch} (RoPE) growth keeps head_dim={src.dh}; drop head_dim and set "
            f"heads to add width (e.g. heads={max(src.n_heads, D2 // src.dh)})"
        )
    if not src.rope and tgt.dh * H2 != D2:
        raise TargetError(f"target rule 'head size': {src.arch} has head_dim = d_model/heads; leave head_dim unset")
    if src.arch == "vit" and tgt.max_seq_len != src.max_seq_len:
        raise TargetError(
            f"target rule 'positions' (vit): positions are patches + 1 = {src.max_seq_len} for the source's "
            f"{src.image_size}px images and {src.patch_size}px patches; drop positions"
        )
    if seq_len is not None and not tgt.rope and src.arch != "vit" and seq_len > tgt.max_seq_len:
        raise TargetError(
            f"target rule 'positions': data.seq_len={seq_len} exceeds the target's {tgt.max_seq_len} "
            f"learned positions; pass positions={seq_len} in --target (or drop positions: it follows data.seq_len)"
        )
    if tgt.vocab_size != src.vocab_size:
        raise TargetError(
            f"target rule 'vocabulary': the grown model keeps the source's vocabulary of {src.vocab_size} "
            f"(got {tgt.vocab_size})"
        )


def _nearest_valid_d_model(src: ModelConfig, want: dict, seq_len: int | None) -> ModelConfig | None:
    """The valid target closest in d_model to ``want`` with heads and kv heads derived from the source."""
    D = want.get("d_model", src.d_model)
    free = {k: v for k, v in want.items() if k not in ("d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff")}
    for delta in range(0, 4 * D):
        for d in (D - delta, D + delta):
            if d < src.d_model:
                continue
            try:
                tgt = _derive(src, {**free, "d_model": d}, seq_len)
                check_target(src, tgt, seq_len)
                return tgt
            except ValueError:
                continue
    return None


def target_config(src: ModelConfig, spec: str | dict, seq_len: int | None = None) -> ModelConfig:
    """The grown model's config: ``src`` with the sizes in ``spec`` (anything unset scales with d_model), checked
    against the family's rules (:func:`check_target`); a failure names the rule and the nearest valid d_model.

    ``positions`` (learned position tables, or RoPE's max_position_embeddings) defaults to the larger of the
    source's and ``seq_len``. RoPE models keep head_dim, so their extra width comes as extra heads. Pre-norm
    targets whose d_model is not a whole multiple get ``norm_eps`` x D/D', which keeps the function-preserving
    start exact (:func:`growth.maps.padded_norm_eps`).
    """
    want = parse_target(spec) if isinstance(spec, str) else dict(spec)
    try:
        try:
            tgt = _derive(src, want, seq_len)
        except TargetError:
            raise
        except ValueError as e:  # ModelConfig's own checks (heads divide d_model, kv heads divide heads)
            raise TargetError(f"target rule: {e}") from None
        check_target(src, tgt, seq_len)
    except TargetError as e:
        near = _nearest_valid_d_model(src, want, seq_len)
        hint = ""
        if near is not None and "divide" in str(e):
            hint = (
                f"; nearest valid d_model={near.d_model} (heads={near.n_heads}"
                + (f", kv_heads={near.kv_heads}" if near.kv_heads != near.n_heads else "")
                + ")"
            )
        raise TargetError(f"{e}{hint}") from None
    return tgt
