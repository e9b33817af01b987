"""LiGO operator: linearity, identity, Net2Net function preservation, materialization, gradient isolation."""

import pytest
import torch
from torch.func import functional_call

from growth.baselines import stack_and_widen
from growth.ligo import LigoConfig, LigoOperator, materialize
from growth.models import ModelConfig, Transformer
from growth.targets import target_config

FAMILIES = {
    "gpt2_tied": dict(arch="gpt2"),
    "gpt2_untied": dict(arch="gpt2", tie_embeddings=False),
    "bert": dict(arch="bert"),
    "llama_gqa_tied": dict(arch="llama", n_kv_heads=2),
    "llama_gqa_untied": dict(arch="llama", n_kv_heads=2, tie_embeddings=False),
}


def small_model(name: str, seed: int = 0) -> tuple[ModelConfig, Transformer]:
    cfg = ModelConfig(vocab_size=40, n_layers=2, d_model=16, n_heads=4, d_ff=32, max_seq_len=12, **FAMILIES[name])
    torch.manual_seed(seed)
    m = Transformer(cfg).eval()
    with torch.no_grad():  # move away from the init so norms/biases are not trivially 1/0
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return cfg, m


IDS = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_growth_is_linear_in_small_weights(family):
    src, m = small_model(family)
    tgt = target_config(
        src,
        "layers=5,d_model=24,ffn=40" if family.startswith("llama") else "layers=5,d_model=24,heads=6,ffn=40",
    )
    op = LigoOperator(m.state_dict(), src, tgt, LigoConfig(noise=0.05), seed=3)
    with torch.no_grad():  # a trained-looking operator, not just the init
        for p in op.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        t1 = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
        t2 = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
        a, b = 1.7, -0.6
        lhs = op.grow({k: a * t1[k] + b * t2[k] for k in t1})
        g1, g2 = op.grow(t1), op.grow(t2)
    assert set(lhs) == set(Transformer(tgt).state_dict())
    for k in lhs:
        torch.testing.assert_close(lhs[k], a * g1[k] + b * g2[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_identity_operator_reproduces_small_model_exactly(family):
    src, m = small_model(family)
    op = LigoOperator(m.state_dict(), src, src, LigoConfig(noise=0.0))
    big = materialize(op).eval()
    with torch.no_grad():
        assert torch.equal(big(IDS), m(IDS))
        on_the_fly = functional_call(Transformer(src).eval(), op.grow(), (IDS,))
    assert torch.equal(on_the_fly, m(IDS))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("spec", ["more_heads", "wider_heads"])
def test_net2net_width_init_preserves_function(family, spec):
    src, m = small_model(family)
    if spec == "wider_heads" and family.startswith("llama"):
        pytest.skip("RoPE models keep head_dim")
    target = {"more_heads": "d_model=32,heads=8,ffn=64", "wider_heads": "d_model=32,heads=4,ffn=64"}[spec]
    tgt = target_config(src, target)
    assert tgt.n_layers == src.n_layers and tgt.d_model == 2 * src.d_model
    big = stack_and_widen(m.state_dict(), src, tgt, noise=0.0).eval()
    with torch.no_grad():
        torch.testing.assert_close(big(IDS), m(IDS), rtol=1e-5, atol=2e-5)
        noisy = stack_and_widen(m.state_dict(), src, tgt, noise=0.05).eval()(IDS)
    assert not torch.allclose(noisy, m(IDS), atol=1e-4)  # noise does break exact symmetry


def test_stacking_init_copies_layers_cyclically():
    src, m = small_model("gpt2_untied")
    tgt = target_config(src, "layers=5")
    big = stack_and_widen(m.state_dict(), src, tgt, noise=0.0)
    for i in range(5):
        assert torch.equal(big.layers[i].q.weight, m.layers[i % 2].q.weight)
    op = LigoOperator(m.state_dict(), src, tgt, LigoConfig(noise=0.0, depth_init="interpolate"))
    assert [int(r.argmax()) for r in op.depth["q__weight"]] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("family", ["gpt2_tied", "bert", "llama_gqa_untied"])
def test_materialized_weights_equal_on_the_fly_weights(family):
    src, m = small_model(family)
    tgt = target_config(src, "layers=4,d_model=32,heads=8,ffn=48")
    op = LigoOperator(m.state_dict(), src, tgt, LigoConfig(noise=0.02), seed=1)
    with torch.no_grad():
        for p in op.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    big = materialize(op).eval()
    grown = op.grow()
    for k, v in big.state_dict().items():
        assert torch.equal(v, grown[k]), k
    with torch.no_grad():
        assert torch.equal(functional_call(Transformer(tgt).eval(), grown, (IDS,)), big(IDS))


def test_only_operator_parameters_receive_gradients():
    src, m = small_model("llama_gqa_tied")
    tgt = target_config(src, "layers=3,d_model=32,heads=8,ffn=48")
    small = {k: v.clone() for k, v in m.state_dict().items()}
    op = LigoOperator(small, src, tgt, LigoConfig())
    large = Transformer(tgt).requires_grad_(False)
    logits = functional_call(large, op.grow(), (IDS,))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), IDS.flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in op.parameters())
    assert all(p.grad is None for p in large.parameters())
    assert all(not v.requires_grad for v in op.small.values())
    trainable = {n for n, p in op.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("width.", "depth.")) for n in trainable)


def test_gate_and_up_share_the_ffn_operator():
    src, m = small_model("llama_gqa_tied")
    tgt = target_config(src, "d_model=32,heads=8,ffn=64")
    op = LigoOperator(m.state_dict(), src, tgt, LigoConfig(noise=0.1))
    g = op.grow()
    Bf, Ae = op.matrix("ffn_out")[0], op.matrix("emb_in")  # layer 0's FFN operator (stacking: w_00 = 1)
    torch.testing.assert_close(g["layers.0.gate.weight"], Bf @ m.layers[0].gate.weight @ Ae.t())
    torch.testing.assert_close(g["layers.0.up.weight"], Bf @ m.layers[0].up.weight @ Ae.t())


@pytest.mark.parametrize("family", ["gpt2_tied", "llama_gqa_tied"])
def test_per_layer_width_operators_follow_the_paper(family):
    """Paper eq.: large layer i = sum_j w_ij B_j W_j A_j^T with per-small-layer q/k/v/o/FFN operators and the
    shared residual-stream ones; with equal per-layer operators it equals the shared parameterization."""
    src, m = small_model(family)
    tgt = target_config(
        src,
        "layers=3,d_model=24,ffn=40" if family.startswith("llama") else "layers=3,d_model=24,heads=6,ffn=40",
    )
    shared = LigoOperator(m.state_dict(), src, tgt, LigoConfig(noise=0.0, per_layer=False))
    per = LigoOperator(m.state_dict(), src, tgt, LigoConfig(noise=0.0, per_layer=True))
    assert per.width["q"].shape == (src.n_layers, *shared.width["q"].shape)
    assert per.width["emb_out"].shape == shared.width["emb_out"].shape
    gs, gp = shared.grow(), per.grow()
    for k in gs:
        torch.testing.assert_close(gp[k], gs[k], rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        for p in per.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g = per.grow()
    W = [m.layers[j].down.weight.detach() for j in range(src.n_layers)]
    B, w = per.matrix("emb_out"), per.depth["down__weight"]
    for i in range(tgt.n_layers):
        want = sum(w[i, j] * B @ W[j] @ per.matrix("ffn_in")[j].t() for j in range(src.n_layers))
        torch.testing.assert_close(g[f"layers.{i}.down.weight"], want, rtol=1e-5, atol=1e-5)
    Wq = [m.layers[j].q.weight.detach() for j in range(src.n_layers)]
    want = sum(
        w_ij * per.matrix("q")[j] @ Wq[j] @ per.matrix("emb_in").t() for j, w_ij in enumerate(per.depth["q__weight"][1])
    )
    torch.testing.assert_close(g["layers.1.q.weight"], want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(per.matrix("q")[0], per.matrix("q")[1])
