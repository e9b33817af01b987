"""ADC strategy: the opacity reset really happens on schedule; grow/prune keep optimizer state aligned."""

from __future__ import annotations

import pytest
import torch

from splatting.config import OptimConfig
from splatting.gaussians import init_gaussians
from splatting.strategies.adc import ADCStrategy
from splatting.train import make_optimizers


def _setup(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = init_gaussians(
        torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g), sh_degree=1, init_opacity=0.9
    )
    return params, make_optimizers(params, OptimConfig(), 1.0)


def _fake_info(n, grad_norm_px):
    """An info dict as the renderer returns it, with a chosen 2-D gradient per Gaussian."""
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.zeros(1, n, 2)
    means2d.grad[0, :, 0] = grad_norm_px
    return {
        "means2d": means2d,
        "radii": torch.ones(1, n, 2, dtype=torch.int32),
        "width": 2,
        "height": 2,
        "n_cameras": 1,
    }


def test_opacity_reset_happens_at_configured_steps():
    params, opts = _setup()
    strat = ADCStrategy(refine_start=1000, refine_stop=50, reset_every=5)
    state = strat.initialize_state(1.0)
    resets = []
    for step in range(0, 13):
        with torch.no_grad():
            params["opacities"].fill_(2.0)  # sigmoid = 0.88, as if training had raised it
        events = strat.step_post_backward(params, opts, state, step, _fake_info(20, 0.0))
        if torch.sigmoid(params["opacities"]).max() <= 2 * strat.prune_opa + 1e-6:
            resets.append(step)
            assert events.get("opacity_reset")
    assert resets == [5, 10]


def test_opacity_reset_zeroes_adam_moments_and_stops_with_densification():
    params, opts = _setup()
    loss = torch.sigmoid(params["opacities"]).sum()
    loss.backward()
    opts["opacities"].step()
    strat = ADCStrategy(refine_start=1000, refine_stop=7, reset_every=3)
    state = strat.initialize_state(1.0)
    strat.step_post_backward(params, opts, state, 3, _fake_info(20, 0.0))
    st = opts["opacities"].state[params["opacities"]]
    assert torch.count_nonzero(st["exp_avg"]) == 0 and torch.count_nonzero(st["exp_avg_sq"]) == 0
    assert opts["opacities"].param_groups[0]["params"][0] is params["opacities"]
    with torch.no_grad():
        params["opacities"].fill_(2.0)
    strat.step_post_backward(params, opts, state, 9, _fake_info(20, 0.0))  # past refine_stop: no reset
    assert torch.sigmoid(params["opacities"]).min() > 0.8


def test_grow_and_prune_keep_params_optimizer_and_state_aligned():
    n = 20
    params, opts = _setup(n)
    with torch.no_grad():
        params["scales"][:10] = -6.0  # small -> cloned
        params["scales"][10:] = 0.0  # large (1.0 > 0.01 x scene) -> split
        params["opacities"][0] = -10.0  # below prune_opa -> pruned after cloning
    (sum(p.sum() for p in params.values())).backward()
    for o in opts.values():
        o.step()
    parent_log_scale = params["scales"][10].detach().clone()
    strat = ADCStrategy(refine_start=0, refine_every=1, reset_every=0)
    state = strat.initialize_state(1.0)
    grads = torch.zeros(n)
    grads[[0, 1, 2, 10, 11]] = 1.0  # above grow_grad2d after the NDC scaling
    ev = strat.step_post_backward(params, opts, state, 1, _fake_info(n, grads))
    assert ev["duplicated"] == 3 and ev["split"] == 2
    # 20 + 3 clones + 2 extra from the splits, minus the low-opacity one and its clone
    assert ev["pruned"] == 2 and len(params["means"]) == 20 + 3 + 2 - 2
    m = len(params["means"])
    for k, p in params.items():
        st = opts[k].state[p]
        assert opts[k].param_groups[0]["params"][0] is p
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
        assert p.shape[0] == m
    assert state["grad2d"].shape == (m,) and state["count"].shape == (m,)
    # split children: scales shrink by 1.6
    expected = parent_log_scale - torch.log(torch.tensor(1.6))
    assert torch.allclose(params["scales"][-4:], expected.expand(4, 3), atol=1e-6)


def test_max_gaussians_caps_growth():
    n = 20
    params, opts = _setup(n)
    strat = ADCStrategy(refine_start=0, refine_every=1, reset_every=0, max_gaussians=24)
    state = strat.initialize_state(1.0)
    strat.step_post_backward(params, opts, state, 1, _fake_info(n, torch.ones(n)))
    assert len(params["means"]) <= 24


def test_bad_strategy_config_is_explained():
    with pytest.raises(ValueError, match="refine_every must be >= 1"):
        ADCStrategy(refine_every=0)
