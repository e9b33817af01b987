"""Parity with the reference packages: same model, seeds and projections -> the same parameters after
20 steps (1e-5 relative). Each test skips only when its reference package is absent."""

from __future__ import annotations

import warnings

import pytest
import torch

from genai_train.optim import OptimConfig, build_optimizer

from .optim_tiny import DIM, HEADS, batches, make_pair, max_rel_diff, mirror_groups, train

STEPS = 20
TOL = 1e-5


def _ref_groups(opt, a, b, low_rank_keys: dict) -> list[dict]:
    groups = []
    for g in mirror_groups(opt.param_groups, a, b):
        ref = {"params": g["params"], "weight_decay": g["weight_decay"]}
        if g.get("low_rank"):
            ref.update(low_rank_keys)
        groups.append(ref)
    return groups


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_galore_matches_galore_torch(wd):
    galore_torch = pytest.importorskip("galore_torch")
    torch.manual_seed(0)
    a, b = make_pair()
    cfg = OptimConfig(name="galore", lr=1e-2, rank=4, update_proj_gap=7, weight_decay=wd)
    opt = build_optimizer(a, cfg)
    assert sum(len(g["params"]) for g in opt.param_groups if g["low_rank"]) == 12  # 6 Linear x 2 blocks
    ref = galore_torch.GaLoreAdamW(
        _ref_groups(opt, a, b, {"rank": 4, "update_proj_gap": 7, "scale": 0.25, "proj_type": "std"}),
        lr=1e-2,
        no_deprecation_warning=True,
    )
    data = batches(STEPS)
    train(a, opt, data)
    train(b, ref, data)
    assert max_rel_diff(a, b) < TOL


@pytest.mark.parametrize("variant", ["apollo", "apollo_mini", "apollo_mini_front"])
def test_apollo_matches_apollo_torch(variant):
    apollo_torch = pytest.importorskip("apollo_torch")
    a, b = make_pair()
    name = "apollo" if variant == "apollo" else "apollo_mini"
    front = variant.endswith("front")
    cfg = OptimConfig(
        name=name, lr=1e-2, rank=4 if name == "apollo" else None, update_proj_gap=7, weight_decay=0.1, scale_front=front
    )
    opt = build_optimizer(a, cfg)
    keys = {
        "rank": cfg.resolved_rank,
        "proj": "random",
        "scale_type": "channel" if name == "apollo" else "tensor",
        "scale": cfg.resolved_scale,
        "update_proj_gap": 7,
        "proj_type": "std",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = apollo_torch.APOLLOAdamW(_ref_groups(opt, a, b, keys), lr=1e-2, scale_front=front)
    data = batches(STEPS)
    train(a, opt, data)
    train(b, ref, data)
    assert max_rel_diff(a, b) < TOL


def test_adam_mini_matches_adam_mini():
    adam_mini = pytest.importorskip("adam_mini")
    a, b = make_pair()
    opt = build_optimizer(a, OptimConfig(name="adam_mini", lr=1e-2, weight_decay=0.1))
    blocks = {n: opt.state[p]["blocks"] for n, p in a.named_parameters()}
    assert blocks["blocks.0.attn.q_proj.weight"] == HEADS and blocks["blocks.0.attn.v_proj.weight"] == DIM
    assert blocks["blocks.0.mlp.fc1.bias"] == 64 and blocks["norm_f.weight"] == 1
    ref = adam_mini.Adam_mini(b.named_parameters(), lr=1e-2, weight_decay=0.1, dim=DIM, n_heads=HEADS, verbose=False)
    data = batches(STEPS)
    train(a, opt, data)
    train(b, ref, data)
    assert max_rel_diff(a, b) < TOL


@pytest.mark.parametrize("scale_parameter", [False, True])
def test_flora_matches_flora_opt(scale_parameter):
    pytest.importorskip("flora_opt")
    pytest.importorskip("accelerate")
    from flora_opt.optimizers.torch import Flora as RefFlora

    a, b = make_pair()
    cfg = OptimConfig(name="flora", lr=1e-2, rank=4, kappa=7, weight_decay=0.1, scale_parameter=scale_parameter)
    opt = build_optimizer(a, cfg)
    ref = RefFlora(
        _ref_groups(opt, a, b, {}),
        lr=1e-2,
        rank=4,
        kappa=7,
        beta1=0.9,
        weight_decay=0.1,
        scale_parameter=scale_parameter,
    )
    # the reference decides compression by shape: the block matrices (aspect <= 4), not embed/lm_head
    data = batches(STEPS)
    train(a, opt, data)
    train(b, ref, data)
    for p in opt.param_groups[0]["params"]:
        assert opt.state[p]["exp_avg"].shape[1 if p.shape[0] >= p.shape[1] else 0] == 4
    assert max_rel_diff(a, b) < TOL
