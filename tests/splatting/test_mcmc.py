"""3DGS-MCMC: the relocation formula, relocation and growth keep optimizer rows with their Gaussians, the cap,
and ADC / MCMC steps on degenerate Gaussians stay finite."""

from __future__ import annotations

import math

import pytest
import torch

from splatting.config import OptimConfig
from splatting.gaussians import init_gaussians
from splatting.render.torch_raster import rasterize
from splatting.strategies import ADCStrategy, MCMCStrategy
from splatting.strategies.mcmc import relocate, relocation, sample_add
from splatting.train import make_optimizers


def _brute_force_relocation(o: float, s: float, n: int) -> tuple[float, float]:
    """Paper Eq. 9 term by term, as gsplat's kernel loops it."""
    new_o = 1 - (1 - o) ** (1 / n)
    denom = sum(
        math.comb(i - 1, k) * (-1) ** k / math.sqrt(k + 1) * new_o ** (k + 1) for i in range(1, n + 1) for k in range(i)
    )
    return new_o, o / denom * s


def test_relocation_closed_form_equals_the_double_sum_and_one_copy_changes_nothing():
    o = torch.tensor([0.9, 0.5, 0.05, 0.99, 0.3, 0.7], dtype=torch.float64)
    s = torch.rand(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.1
    n = torch.tensor([1, 2, 3, 7, 20, 51])
    new_o, new_s = relocation(o, s, n)
    for i in range(6):
        ref_o, ref_s = _brute_force_relocation(float(o[i]), 1.0, int(n[i]))
        assert abs(float(new_o[i]) - ref_o) < 1e-12
        assert torch.allclose(new_s[i], s[i] * ref_s, rtol=1e-8)
    assert torch.allclose(new_o[0], o[0]) and torch.allclose(new_s[0], s[0])
    # n copies of opacity o' composite to the original opacity
    assert torch.allclose(1 - (1 - new_o) ** n.double(), o)


def _setup(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = init_gaussians(
        torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g), sh_degree=1, init_opacity=0.5
    )
    opts = make_optimizers(params, OptimConfig(), 1.0)
    (sum(p.sum() for p in params.values())).backward()
    for o in opts.values():
        o.step()
    with torch.no_grad():  # mark every row's Adam moments with its index + 1
        for k, p in params.items():
            st = opts[k].state[p]
            for key in ("exp_avg", "exp_avg_sq"):
                st[key].copy_((torch.arange(n, dtype=p.dtype) + 1).reshape(-1, *[1] * (p.ndim - 1)).expand_as(p))
    return params, opts


def test_relocation_keeps_the_count_and_moves_optimizer_rows_with_their_gaussians():
    n = 20
    params, opts = _setup(n)
    with torch.no_grad():
        params["opacities"][[3, 7, 11]] = -10.0  # dead
    before = {k: p.detach().clone() for k, p in params.items()}
    dead = torch.sigmoid(params["opacities"]) <= 0.005
    moved = relocate(params, opts, dead, 0.005, torch.Generator().manual_seed(0))
    assert moved == 3 and all(len(p) == n for p in params.values())
    zeroed = set()
    for i in (3, 7, 11):  # each dead slot now holds a copy of a live Gaussian (same position)
        src = [j for j in range(n) if j not in (3, 7, 11) and torch.equal(before["means"][j], params["means"][i])]
        assert len(src) == 1
        zeroed |= {i, src[0]}
        assert torch.equal(params["opacities"][i], params["opacities"][src[0]])
        assert params["opacities"][i] < before["opacities"][src[0]]  # mass shared with the copy
    for k, p in params.items():
        st = opts[k].state[p]
        assert opts[k].param_groups[0]["params"][0] is p and st["exp_avg"].shape == p.shape
        for j in range(n):
            expected = 0.0 if j in zeroed else float(j + 1)
            assert torch.all(st["exp_avg"][j] == expected) and torch.all(st["exp_avg_sq"][j] == expected), (k, j)
            if j not in zeroed:
                assert torch.equal(p[j], before[k][j])


def test_growth_adds_rows_with_zero_moments_and_never_exceeds_cap_max():
    n = 20
    params, opts = _setup(n)
    added = sample_add(params, opts, 4, 0.005, torch.Generator().manual_seed(0))
    assert added == 4 and len(params["means"]) == 24
    st = opts["means"].state[params["means"]]
    assert torch.all(st["exp_avg"][:20] == (torch.arange(20.0) + 1)[:, None]) and torch.all(st["exp_avg"][20:] == 0)
    strat = MCMCStrategy(cap_max=27, refine_start=0, refine_every=1, grow_rate=0.05)
    state = strat.initialize_state(1.0, seed=0)
    counts = []
    for step in range(1, 8):
        ev = strat.refine(params, opts, state, step, lr=1e-4)
        counts.append(ev["n"])
        assert all(len(p) == ev["n"] for p in params.values())
    assert counts == [25, 26, 27, 27, 27, 27, 27]
    assert all(torch.isfinite(p).all() for p in params.values())


def test_same_seed_same_decisions_and_the_state_carries_the_draws():
    results = []
    for _ in range(2):
        params, opts = _setup(12)
        with torch.no_grad():
            params["opacities"][:4] = -10.0
        strat = MCMCStrategy(refine_start=0, refine_every=2)
        state = strat.initialize_state(1.0, seed=3)
        for step in range(1, 6):
            strat.refine(params, opts, state, step, lr=1e-3)
        results.append((params["means"].detach().clone(), state["rng"].clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def _degenerate_scene():
    """Zero and huge scales, zero opacity, duplicate points (the SteepGS estimators' degenerate set)."""
    means = torch.tensor([[0.0, 0, 4], [0.0, 0, 4], [0.5, 0, 4], [-0.5, 0, 4], [0.2, 0.2, 4], [0.2, 0.2, 4]])
    return torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(means),
            "scales": torch.nn.Parameter(
                torch.tensor(
                    [[-30.0, 0.3, 0.3], [0.3, 0.3, 0.3], [6.0, 6, 6], [-1.0, -1, -1], [-30.0, -30, -30]] + [[-2.0] * 3]
                )
            ),
            "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]] * 5 + [[0.0, 0, 0, 0]])),
            "opacities": torch.nn.Parameter(torch.tensor([0.5, -30.0, 0.5, 0.5, 0.5, -100.0])),
            "sh0": torch.nn.Parameter(torch.ones(6, 1, 3)),
            "shN": torch.nn.Parameter(torch.zeros(6, 3, 3)),
        }
    )


@pytest.mark.parametrize("name", ["adc", "mcmc"])
def test_strategies_step_on_degenerate_gaussians_with_finite_outputs(name):
    params = _degenerate_scene()
    opts = make_optimizers(params, OptimConfig(), 1.0)
    if name == "adc":
        strat = ADCStrategy(refine_start=0, refine_every=1, reset_every=3, grow_grad2d=0.0, prune_opa=0.01)
    else:
        strat = MCMCStrategy(refine_start=0, refine_every=1)
    state = strat.initialize_state(1.0)
    target = torch.full((16, 16, 3), 0.5)
    Ks = torch.tensor([[[20.0, 0, 8.0], [0, 20.0, 8.0], [0, 0, 1]]])
    for step in range(1, 6):
        colors = torch.cat([params["sh0"], params["shN"]], dim=1)
        img, _, info = rasterize(
            params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
            colors, torch.eye(4)[None], Ks, 16, 16, sh_degree=1, backgrounds=torch.zeros(1, 3),
        )  # fmt: skip
        loss = (img[0] - target).abs().mean() + strat.regularization(params)
        strat.step_pre_backward(params, opts, state, step, info)
        loss.backward()
        assert torch.isfinite(loss)
        for o in opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        if strat.accumulates:
            strat.accumulate(params, state, info)
        strat.refine(params, opts, state, step, lr=1e-3)
        assert len(params["means"]) > 0
        for k, p in params.items():
            assert torch.isfinite(p).all(), (k, step)
