"""The function-preserving LiGO start: exact source logits at init, and an operator that can still learn."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from growth.ligo import LigoConfig, LigoOperator, materialize, resolve_init
from growth.maps import identity_depth, padded_norm_eps, residual_maps, rms_gain_scale
from growth.models import ModelConfig, RMSNorm, Transformer
from growth.targets import target_config
from tests.growth.test_ligo import FAMILIES, IDS, small_model

PRESERVE = LigoConfig(depth_init="identity", width_init="preserve", noise=0.05)
# (target spec, residual scheme): d 16 -> 24 pads the stream, 16 -> 32 copies it; 2 -> 5 / 3 layers adds identity
SPECS = {"pad": "layers=5,d_model=24,ffn=40", "copy": "layers=3,d_model=32,ffn=48"}


def test_rms_gain_scale_keeps_rmsnorm_of_a_zero_padded_vector():
    torch.manual_seed(0)
    x, g = torch.randn(3, 576), torch.rand(576) + 0.5
    small, big = RMSNorm(576, 1e-5), RMSNorm(768, padded_norm_eps(1e-5, 576, 768))
    with torch.no_grad():
        small.weight.copy_(g)
        big.weight.copy_(torch.cat([g, torch.rand(192)]) * rms_gain_scale(576, 768))
        out = big(torch.cat([x, torch.zeros(3, 192)], -1))
    torch.testing.assert_close(out[:, :576], small(x), rtol=1e-6, atol=1e-6)
    assert torch.equal(out[:, 576:], torch.zeros(3, 192))


def test_layernorm_with_mean_padding_and_scaled_gains_is_unchanged():
    torch.manual_seed(0)
    x, g, b = torch.randn(3, 16) + 2.0, torch.rand(16) + 0.5, torch.randn(16)
    pad = x.mean(-1, keepdim=True).expand(3, 8)  # new dims hold the mean of the old ones
    eps = padded_norm_eps(1e-5, 16, 24)
    out = F.layer_norm(torch.cat([x, pad], -1), (24,), torch.cat([g * rms_gain_scale(16, 24), g[:8]]), None, eps)
    torch.testing.assert_close(out[:, :16], F.layer_norm(x, (16,), g, b, 1e-5) - b, rtol=1e-5, atol=1e-5)
    assert out[:, 16:].abs().max() < 1e-5


def test_identity_depth_interleaves_zero_output_blocks():
    inputs, outputs = identity_depth(30, 32)
    src = inputs.argmax(1)
    assert torch.equal(inputs.sum(1), torch.ones(32)) and sorted(set(src.tolist())) == list(range(30))
    new = (outputs.sum(1) == 0).nonzero().flatten().tolist()
    assert len(new) == 2 and all(src[i] == src[i - 1] for i in new)  # each right after the layer it copies
    assert new[0] < 16 < new[1]  # spread over the depth, not stacked on top


def test_residual_scheme_follows_the_width_ratio():
    src = ModelConfig(arch="llama", vocab_size=40, n_layers=2, d_model=16, n_heads=4, n_kv_heads=2, d_ff=32)
    assert residual_maps(src, target_config(src, "d_model=32"))[0] == "copy"
    kind, maps = residual_maps(src, target_config(src, "d_model=24"))
    assert kind == "pad" and torch.equal(maps["emb_out"][16:], torch.zeros(8, 16))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("scheme", list(SPECS))
def test_function_preserving_start_gives_the_source_logits(family, scheme):
    src, m = small_model(family)
    if family == "bert":  # post-LN: whole-multiple width only, and no identity block (same depth)
        if scheme == "pad":
            with pytest.raises(ValueError, match="post-LayerNorm"):
                LigoOperator(m.state_dict(), src, target_config(src, SPECS["pad"]), PRESERVE)
            return
        tgt, cfg = target_config(src, "d_model=32,ffn=48"), dataclasses.replace(PRESERVE, depth_init="stack")
    else:
        tgt, cfg = target_config(src, SPECS[scheme]), PRESERVE
    assert tgt.d_model > src.d_model and tgt.d_ff > src.d_ff
    op = LigoOperator(m.state_dict(), src, tgt, cfg, seed=2)
    assert op.residual == scheme
    big = materialize(op).eval()
    with torch.no_grad():
        want = m(IDS)
        torch.testing.assert_close(big(IDS), want, rtol=0, atol=1e-5)
        torch.testing.assert_close(functional_call(Transformer(tgt).eval(), op.grow(), (IDS,)), want, rtol=0, atol=1e-5)


def test_auto_init_rule():
    src, m = small_model("llama_gqa_tied")
    for spec, want in (
        ("layers=4,d_model=32", ("stack", "net2net")),
        ("layers=5,d_model=24", ("identity", "preserve")),
    ):
        assert resolve_init(LigoConfig(), src, target_config(src, spec)) == want
    bert, _ = small_model("bert")
    assert resolve_init(LigoConfig(), bert, target_config(bert, "layers=5")) == ("stack", "net2net")
    with pytest.raises(ValueError, match="identity"):
        resolve_init(LigoConfig(depth_init="identity"), bert, target_config(bert, "layers=5"))


def test_operator_learns_from_the_function_preserving_start():
    """New blocks' output coefficients and new units' output rows get gradient at once; what feeds a zero
    output (the new block's q..up coefficients, new units' input rows) gets exactly zero gradient at the first
    step and nonzero once the outputs have moved."""
    src, m = small_model("llama_gqa_tied")
    tgt = target_config(src, SPECS["pad"])
    op = LigoOperator(m.state_dict(), src, tgt, dataclasses.replace(PRESERVE, noise=0.0, per_layer=False))
    model = Transformer(tgt)
    opt = torch.optim.Adam(op.parameters(), lr=1e-2)
    new = [i for i in range(tgt.n_layers) if op.depth["o__weight"][i].sum() == 0]
    assert new == [1, 2, 4]  # floor(i 2 / 5) = 0 0 0 1 1: the repeats are the new blocks

    def grads() -> dict[str, torch.Tensor]:
        opt.zero_grad()
        logits = functional_call(model, op.grow(), (IDS[:, :-1],))
        F.cross_entropy(logits.flatten(0, 1), IDS[:, 1:].flatten()).backward()
        return {n: p.grad.clone() for n, p in op.named_parameters()}

    g = grads()
    for key in ("o__weight", "down__weight"):
        assert g[f"depth.{key}"][new].abs().sum(1).min() > 0
    for key in ("q__weight", "up__weight", "attn_norm__weight"):
        assert g[f"depth.{key}"][new].abs().sum() == 0
    assert g["width.emb_out"][16:].abs().sum() > 0 and g["width.ffn_in"][32:].abs().sum() > 0
    assert g["width.ffn_out"][32:].abs().sum() == 0
    opt.step()
    g = grads()
    for key in ("q__weight", "up__weight", "attn_norm__weight"):
        assert g[f"depth.{key}"][new].abs().sum(1).min() > 0
    assert g["width.ffn_out"][32:].abs().sum() > 0 and g["width.emb_in"][16:].abs().sum() > 0
