"""Closed forms, exact resume, per-layer mode, selection and bad input of the core optimizers."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from genai_train.checkpoint import Checkpointer
from genai_train.optim import (
    GaLore,
    OptimConfig,
    build_optimizer,
    low_rank_params,
    optimizer_state_bytes,
    param_groups,
)

from .optim_tiny import batches, loss_fn, make_pair, max_rel_diff, train

METHODS = ["galore", "apollo", "apollo_mini", "adam_mini", "flora"]


def _cfg(name: str, **kw) -> OptimConfig:
    # small rank and refresh gaps so a refresh / momentum transfer happens inside the short runs
    base = dict(name=name, lr=1e-2, update_proj_gap=3, weight_decay=0.1, kappa=3)
    if name in ("galore", "apollo", "flora"):
        base["rank"] = 4
    return OptimConfig(**{**base, **kw})


def _galore_identity(model, eps: float) -> GaLore:
    groups = param_groups(list(model.named_parameters()), OptimConfig(name="galore", rank=2), model)
    assert groups[0]["low_rank"] and len(groups[0]["params"]) == 12
    return GaLore(groups, lr=1e-3, eps=eps, rank=10**6, scale=1.0, projection="identity")


def test_galore_full_rank_identity_equals_torch_adamw():
    # GaLore adds eps to sqrt(v) before the bias correction, torch after it; with an eps far below
    # sqrt(v) the two conventions coincide, so this checks everything else of the update
    a, b = make_pair()
    opt = _galore_identity(a, eps=1e-12)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-3, eps=1e-12, weight_decay=0.0)
    data = batches(20)
    train(a, opt, data)
    train(b, ref, data)
    assert max_rel_diff(a, b) < 1e-5


def test_galore_full_rank_identity_equals_reference_adamw_same_eps():
    galore_torch = pytest.importorskip("galore_torch")
    a, b = make_pair()
    opt = _galore_identity(a, eps=1e-6)
    ref = galore_torch.GaLoreAdamW(b.parameters(), lr=1e-3, eps=1e-6, no_deprecation_warning=True)
    data = batches(20)
    train(a, opt, data)
    train(b, ref, data)
    assert max_rel_diff(a, b) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # fused kernel | foreach fallback
def test_adam_direction_into_workspace_equals_closed_form(dtype):
    from genai_train.optim.base import adam_direction

    gen = torch.Generator().manual_seed(0)
    gs = [torch.randn(5, 3, generator=gen, dtype=dtype) for _ in range(2)]
    m0 = [torch.randn(5, 3, generator=gen, dtype=dtype) for _ in range(2)]
    v0 = [torch.rand(5, 3, generator=gen, dtype=dtype) for _ in range(2)]
    b1, b2, eps, k = 0.9, 0.999, 1e-6, 4
    ms, vs = [m.clone() for m in m0], [v.clone() for v in v0]
    fresh = adam_direction(gs, ms, vs, k, b1, b2, eps)
    ms2, vs2 = [m.clone() for m in m0], [v.clone() for v in v0]
    work = [torch.full_like(g, 7.0) for g in gs]  # stale contents must not leak into the result
    got = adam_direction(gs, ms2, vs2, k, b1, b2, eps, out=work)
    assert all(a is b for a, b in zip(got, work))
    for g, m, v, f, w, m_new, v_new in zip(gs, m0, v0, fresh, work, ms2, vs2):
        assert torch.equal(f, w)
        m_ref, v_ref = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        torch.testing.assert_close(m_new, m_ref)
        torch.testing.assert_close(v_new, v_ref)
        torch.testing.assert_close(w, -m_ref / (v_ref.sqrt() + eps))


def test_reused_workspaces_one_pair_per_shape():
    from genai_train.optim.projector import reused_workspaces

    like = [torch.zeros(4, 2), torch.zeros(2, 4), torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.float64)]
    work = reused_workspaces(like)
    assert len(work) == len(like)
    for (a, b), t in zip(work, like):
        assert a.shape == b.shape == t.shape and a.dtype == b.dtype == t.dtype
        assert a.data_ptr() != b.data_ptr()
    assert work[0][0] is work[2][0] and work[0][1] is work[2][1]  # same shape and dtype: shared
    assert len({id(a) for a, _ in work}) == 3  # (4, 2) fp32, (2, 4) fp32, (4, 2) fp64


def test_galore_projector_is_compact_copy():
    a, _ = make_pair()
    opt = build_optimizer(a, _cfg("galore"))
    train(a, opt, batches(1))
    for p in opt.param_groups[0]["params"]:
        proj = opt.state[p]["proj"]
        m, n = p.shape
        assert proj.shape == ((4, n) if m >= n else (m, 4)) and proj.is_contiguous()
        assert proj.untyped_storage().nbytes() == 4 * min(m, n) * proj.element_size()
        # orthonormal rows/columns from the SVD
        gram = proj @ proj.t() if m >= n else proj.t() @ proj
        torch.testing.assert_close(gram, torch.eye(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", METHODS)
def test_resume_weights_only_matches_uninterrupted_run(name, tmp_path):
    data = batches(8)
    a, b = make_pair()
    opt_a = build_optimizer(a, _cfg(name))
    train(a, opt_a, data)

    opt_b = build_optimizer(b, _cfg(name))
    train(b, opt_b, data[:4])
    ck = Checkpointer(tmp_path / "ckpt", keep=2, task="optim-test")
    ck.save(4, {"model": b.state_dict(), "optimizer": opt_b.state_dict()})
    buf = io.BytesIO()
    torch.save(opt_b.state_dict(), buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)  # plain tensors and ints only

    c, _ = make_pair(seed=123)  # fresh objects, different initial weights
    step, state = ck.load_latest()
    assert step == 4
    c.load_state_dict(state["model"])
    opt_c = build_optimizer(c, _cfg(name))
    opt_c.load_state_dict(state["optimizer"])
    train(c, opt_c, data[4:])
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(pa, pc)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("accum", [1, 3])
def test_per_layer_mode_equals_normal_step(name, accum):
    data = batches(4 * accum)
    a, b = make_pair()
    opt_a = build_optimizer(a, _cfg(name))
    opt_b = build_optimizer(b, _cfg(name, per_layer=True))
    assert opt_b.per_layer
    for i in range(0, len(data), accum):
        for j, batch in enumerate(data[i : i + accum]):
            (loss_fn(a, batch) / accum).backward()
            opt_b.step_in_backward = j == accum - 1
            (loss_fn(b, batch) / accum).backward()
            if j < accum - 1:  # gradients accumulate until the last micro-batch
                assert all(p.grad is not None for p in b.parameters())
        assert all(p.grad is None for p in b.parameters())  # consumed inside backward
        opt_a.step()
        opt_a.zero_grad(set_to_none=True)
        opt_b.step()  # no-op: nothing left to step
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert opt_b.state_dict()["state"].keys() == opt_a.state_dict()["state"].keys()


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 3, padding=1), nn.SiLU()) for _ in range(2)
        )
        self.attn = nn.ModuleList([nn.MultiheadAttention(8, 2, batch_first=True)])
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for b in self.blocks:
            x = x + b(x)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn[0](t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


def test_selection_by_module_type_includes_conv_and_blocks_only():
    net = ConvNet()
    chosen = low_rank_params(net, "blocks", include_conv=True)
    names = {n for n, p in net.named_parameters() if id(p) in chosen}
    assert names == {"blocks.0.1.weight", "blocks.1.1.weight", "attn.0.in_proj_weight", "attn.0.out_proj.weight"}
    assert "blocks.0.1.weight" not in {
        n for n, p in net.named_parameters() if id(p) in low_rank_params(net, "blocks", include_conv=False)
    }
    every = {n for n, p in net.named_parameters() if id(p) in low_rank_params(net, "all_linear")}
    assert {"conv_in.weight", "head.weight"} <= every


@pytest.mark.parametrize("name", METHODS)
def test_conv_weights_train_in_every_method(name):
    torch.manual_seed(0)
    net = ConvNet()
    opt = build_optimizer(net, _cfg(name, rank=2 if name != "apollo_mini" else None))
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 4, (4,))
    before = net.blocks[0][1].weight.detach().clone()
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(net(x), y)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert not torch.equal(before, net.blocks[0][1].weight)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert losses[-1] < losses[0]


def test_state_is_smaller_than_adamw():
    sizes = {}
    for name in ["adamw", *METHODS]:
        a, _ = make_pair()
        opt = build_optimizer(a, _cfg(name))
        train(a, opt, batches(1))
        sizes[name] = optimizer_state_bytes(opt)
    for name in METHODS:
        assert sizes[name] < sizes["adamw"], (name, sizes)


def test_build_optimizer_needs_the_model_for_low_rank_selection():
    a, _ = make_pair()
    named = list(a.named_parameters())
    with pytest.raises(ValueError, match="needs the model"):
        build_optimizer(named, OptimConfig(name="galore"))
    with pytest.raises(ValueError, match="needs the model"):  # a generator is not looked into either
        build_optimizer(a.named_parameters(), OptimConfig(name="galore"))
    opt = build_optimizer(named, OptimConfig(name="galore", rank=4), model=a)
    assert opt.param_groups[0]["low_rank"]


def test_build_optimizer_refuses_bare_parameters_with_advice():
    a, _ = make_pair()
    with pytest.raises(TypeError, match=r"pass model.named_parameters\(\) or the model itself"):
        build_optimizer(a.parameters(), OptimConfig(name="adamw"))


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(name="sgd"), "choose one of"),
        (dict(rank=0), "rank"),
        (dict(name="adamw", per_layer=True), "per_layer"),
        (dict(update_proj_gap=0), "update_proj_gap"),
    ],
)
def test_bad_config_names_the_fix(kw, msg):
    with pytest.raises(ValueError, match=msg):
        OptimConfig(**kw)


@pytest.mark.parametrize("name", METHODS)
def test_bf16_parameters_train_and_resume(name):
    a, _ = make_pair()
    a = a.to(torch.bfloat16)
    opt = build_optimizer(a, _cfg(name))
    before = [p.detach().clone() for p in a.parameters()]
    data = batches(4)
    train(a, opt, data[:2])
    opt2 = build_optimizer(a, _cfg(name))
    opt2.load_state_dict(opt.state_dict())
    train(a, opt2, data[2:])
    assert all(torch.isfinite(p.float()).all() for p in a.parameters())
    assert sum(not torch.equal(b, p) for b, p in zip(before, a.parameters())) > 10


def test_low_rank_method_without_matrices_to_project_says_what_to_do():
    flat = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # no repeated blocks
    with pytest.raises(ValueError, match="optim.target=all_linear"):
        build_optimizer(flat, OptimConfig(name="galore"))
    with pytest.warns(UserWarning, match=r"1 of 2 matrices stay full-rank.*\(e.g. 2.weight \(2, 8\)\)"):
        opt = build_optimizer(flat, OptimConfig(name="galore", target="all_linear", rank=2))
    assert len(opt.param_groups[0]["params"]) == 1  # [8, 4] at rank 2: 40 floats of state against AdamW's 64


def test_projection_that_would_not_save_memory_leaves_the_matrix_full_rank():
    """The Patch Diffusion UNet's first conv at GaLore's default rank 128: [32, 288] projected keeps
    2*288*128 + 128*32 floats against AdamW's 2*32*288, so it stays with AdamW, and the state shrinks."""
    from genai_train.optim import optimizer_state_bytes

    net = nn.Module()
    net.blocks = nn.ModuleList([nn.Conv2d(32, 32, 3), nn.Linear(512, 512)])
    with pytest.warns(UserWarning, match="1 of 2 matrices stay full-rank"):
        opt = build_optimizer(net, OptimConfig(name="galore"))
    assert opt.param_groups[0]["params"] == [net.blocks[1].weight]
    net.blocks[0](torch.randn(1, 32, 5, 5)).sum().backward()
    net.blocks[1](torch.randn(2, 512)).sum().backward()
    opt.step()
    adamw = torch.optim.AdamW(net.parameters())
    adamw.step()
    assert optimizer_state_bytes(opt) < optimizer_state_bytes(adamw)


@pytest.mark.parametrize("name", ["galore", "apollo"])
def test_per_layer_resume_matches_uninterrupted_run(name):
    data = batches(6)
    a, b = make_pair()
    opt_a = build_optimizer(a, _cfg(name, per_layer=True))
    train(a, opt_a, data)
    opt_b = build_optimizer(b, _cfg(name, per_layer=True))
    train(b, opt_b, data[:3])
    buf = io.BytesIO()
    torch.save({"model": b.state_dict(), "optimizer": opt_b.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    c, _ = make_pair(seed=7)
    c.load_state_dict(state["model"])
    opt_c = build_optimizer(c, _cfg(name, per_layer=True))
    opt_c.load_state_dict(state["optimizer"])
    train(c, opt_c, data[3:])
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(pa, pc)


def test_per_layer_hooks_read_the_live_learning_rate_after_load_state_dict():
    a, _ = make_pair()
    opt = build_optimizer(a, _cfg("galore", per_layer=True))
    train(a, opt, batches(1))
    opt.load_state_dict(opt.state_dict())  # replaces the group dicts
    for g in opt.param_groups:  # what an LR scheduler does
        g["lr"] = 0.0
    before = [p.detach().clone() for p in a.parameters()]
    train(a, opt, batches(1, seed=5))
    assert all(torch.equal(b, p) for b, p in zip(before, a.parameters()))
