"""Splatting optimizers (``--optim.name``): selective Adam and Adam-mini against Adam's closed form, their state
rows following the Gaussians through densification, exact resume, and errors that say what to do."""

from __future__ import annotations

import pytest
import torch

from genai_train.config import ConfigError, load_config
from genai_train.optim.memory import optimizer_state_bytes
from splatting.config import OptimConfig, TrainConfig
from splatting.gaussians import init_gaussians
from splatting.optim import OPTIMIZERS, AdamMini, SelectiveAdam, build_optimizers, row_mean_square, visibility
from splatting.strategies import ops
from splatting.train import make_optimizers

SHAPES = {"means": (3,), "scales": (3,), "quats": (4,), "opacities": (), "sh0": (1, 3), "shN": (3, 3)}


def _params(n=12, seed=0) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.ParameterDict({k: torch.nn.Parameter(torch.randn(n, *s, generator=g)) for k, s in SHAPES.items()})


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=g) * 10 ** torch.randint(-3, 2, (), generator=g).item()


def _run(params, opts, steps, visible=None, seed0=100):
    for t in range(steps):
        _grads(params, seed0 + t)
        for o in opts.values():
            o.step() if visible is None else o.step(visible=visible)


def _copy(params) -> torch.nn.ParameterDict:
    return torch.nn.ParameterDict({k: torch.nn.Parameter(p.detach().clone()) for k, p in params.items()})


RATES = {"means": 1e-3, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 1e-4}


def test_selective_adam_with_every_gaussian_visible_equals_adam():
    a, b = _params(), _params()
    adam, sel = build_optimizers(a, "adam", RATES), build_optimizers(b, "selective_adam", RATES)
    _run(a, adam, 6)
    _run(b, sel, 6, visible=torch.ones(12, dtype=torch.bool))
    for k in SHAPES:
        assert (a[k] - b[k]).abs().max() <= 1e-6, k
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(adam[k].state[a[k]][key], sel[k].state[b[k]][key], rtol=1e-6, atol=0), (k, key)
        assert float(sel[k].state[b[k]]["step"]) == 6  # one shared count per attribute, as Adam's


def test_selective_adam_leaves_invisible_rows_bit_identical():
    params = _params()
    opts = build_optimizers(params, "selective_adam", RATES)
    _run(params, opts, 2, visible=torch.ones(12, dtype=torch.bool))  # every row has non-zero moments
    before = {k: (p.detach().clone(), {s: v.clone() for s, v in opts[k].state[p].items()}) for k, p in params.items()}
    visible = torch.arange(12) % 3 == 0
    _run(params, opts, 3, visible=visible, seed0=7)
    for k, p in params.items():
        p0, st0 = before[k]
        st = opts[k].state[p]
        assert torch.equal(p[~visible], p0[~visible]) and not torch.equal(p[visible], p0[visible]), k
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(st[key][~visible], st0[key][~visible]), (k, key)
            assert not torch.equal(st[key][visible], st0[key][visible]), (k, key)


def test_adam_mini_with_one_float_per_gaussian_equals_adam():
    a = torch.nn.ParameterDict(
        {"opacities": torch.nn.Parameter(torch.randn(50)), "x": torch.nn.Parameter(torch.randn(50, 1))}
    )
    b = _copy(a)
    adam = {k: torch.optim.Adam([a[k]], lr=0.05, eps=1e-15) for k in a}
    mini = {k: AdamMini([b[k]], lr=0.05) for k in b}
    _run(a, adam, 8)
    _run(b, mini, 8)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7), k
        v_adam, v_mini = adam[k].state[a[k]]["exp_avg_sq"], mini[k].state[b[k]]["exp_avg_sq"]
        assert torch.allclose(v_adam.reshape(-1), v_mini.reshape(-1), rtol=1e-6, atol=0), k


def test_adam_mini_keeps_the_ema_of_each_gaussians_mean_squared_gradient():
    params = _params()
    opts = build_optimizers(params, "adam_mini", RATES)
    _grads(params, 0)
    g = {k: p.grad.clone() for k, p in params.items()}
    for o in opts.values():
        o.step()
    for k, p in params.items():
        v = opts[k].state[p]["exp_avg_sq"]
        want = (1 - 0.999) * (g[k] ** 2).reshape(12, -1).mean(1)
        assert v.shape == (12,) + (1,) * (p.ndim - 1), k
        assert torch.allclose(v.reshape(-1), want, rtol=1e-6), k
        assert torch.allclose(opts[k].state[p]["exp_avg"], 0.1 * g[k], rtol=1e-6), k
    assert torch.equal(row_mean_square(torch.zeros(4, 0, 3)), torch.zeros(4, 1, 1))  # shN at SH degree 0


def test_adam_mini_state_is_one_plus_one_over_k_of_the_params_and_adam_twice():
    n = 1000
    for name, want in (("adam", lambda k: 2.0), ("selective_adam", lambda k: 2.0), ("adam_mini", lambda k: 1 + 1 / k)):
        params = _params(n)
        opts = build_optimizers(params, name, RATES)
        _run(params, opts, 1, visible=torch.ones(n, dtype=torch.bool) if name == "selective_adam" else None)
        for k, p in params.items():
            ratio = (optimizer_state_bytes(opts[k]) - 4) / (p.numel() * 4)  # minus the 4-byte step count
            assert ratio == pytest.approx(want(p[0].numel()), rel=1e-9), (name, k)
    # a Gaussian at SH degree 3: 59 floats in 6 attributes -> (59 + 6) / (2 x 59) = 0.55 of Adam's state
    assert (59 + 6) / (2 * 59) < 0.6


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_rows_follow_their_gaussians_through_clone_split_prune_and_reset(name):
    n = 10
    params = _params(n)
    opts = build_optimizers(params, name, RATES)
    _run(params, opts, 2, visible=torch.ones(n, dtype=torch.bool) if name == "selective_adam" else None)
    rows = {k: {s: v.clone() for s, v in opts[k].state[p].items() if s != "step"} for k, p in params.items()}
    state = {"count": torch.arange(n, dtype=torch.float32)}  # a strategy accumulator, tracks the row ids

    clone = torch.zeros(n, dtype=torch.bool)
    clone[[1, 4]] = True
    ops.duplicate(params, opts, state, clone)
    splt = torch.zeros(n + 2, dtype=torch.bool)
    splt[[0, 7]] = True
    ops.split(params, opts, state, splt, torch.zeros(2, 2, 3))
    prune = torch.zeros(len(state["count"]), dtype=torch.bool)
    prune[[2, 5]] = True
    ops.remove(params, opts, state, prune)

    ids = state["count"].long()  # the original row of each Gaussian (clones and children repeat their parent's)
    assert ids.tolist() == [1, 2, 4, 5, 8, 9, 1, 4, 0, 7, 0, 7]  # survivors, then 2 clones, then 4 children
    fresh = torch.arange(len(ids)) >= 6
    for k, p in params.items():
        st = opts[k].state[p]
        assert opts[k].param_groups[0]["params"][0] is p and p.shape[0] == len(ids)
        for key, old in rows[k].items():
            assert st[key].shape[0] == len(ids), (k, key)
            assert torch.equal(st[key][~fresh], old[ids[~fresh]]), (k, key)
            assert torch.count_nonzero(st[key][fresh]) == 0, (k, key)  # new Gaussians start with zero moments
    ops.reset_opacity(params, opts, 0.01)
    assert all(
        torch.count_nonzero(v) == 0 for s, v in opts["opacities"].state[params["opacities"]].items() if s != "step"
    )
    _run(params, opts, 1, visible=torch.ones(len(ids), dtype=torch.bool) if name == "selective_adam" else None)
    assert all(torch.isfinite(p).all() for p in params.values())


def test_visibility_is_the_union_of_the_views_radii():
    radii = torch.zeros(2, 5, 2, dtype=torch.int32)
    radii[0, 1] = 3
    radii[1, 3] = 2
    radii[1, 4, 0] = 1  # one axis culled: not visible (as ADC counts it)
    infos = [{"radii": radii[:1]}, {"radii": radii[1:]}]
    assert visibility(infos, 5).tolist() == [False, True, False, True, False]
    assert visibility([{"radii": radii[:, :, 0]}], 5).tolist() == [False, True, False, True, True]


def test_misuse_is_explained():
    with pytest.raises(ConfigError, match=r"'adam', 'selective_adam', 'adam_mini'"):
        load_config(TrainConfig, None, ["--optim.name=sgd"])
    with pytest.raises(ValueError, match="one of adam, selective_adam, adam_mini"):
        OptimConfig(name="lion")
    with pytest.raises(ValueError, match="renderer gives none; use optim.name=adam"):
        visibility([{"means2d": torch.zeros(1, 5, 2)}], 5)
    params = init_gaussians(torch.randn(5, 3), torch.rand(5, 3), sh_degree=1)
    opts = make_optimizers(params, OptimConfig(name="selective_adam"), 1.0)
    assert isinstance(opts["means"], SelectiveAdam)
    params["means"].grad = torch.ones(5, 3)
    with pytest.raises(ValueError, match=r"needs visible=\[N\].*use optim.name=adam"):
        opts["means"].step()
    with pytest.raises(ValueError, match="shape"):
        opts["means"].step(visible=torch.ones(4, dtype=torch.bool))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    pytest.importorskip("pycolmap")  # the scene loader's; the optimizer tests above run without it
    from splatting.synthetic import write_colmap_scene

    d = tmp_path_factory.mktemp("optim_scene")
    write_colmap_scene(d, n_views=9, width=32, height=24, n_gaussians=80, n_points=60)
    return d


@pytest.mark.parametrize("name", ["selective_adam", "adam_mini"])
def test_resume_at_step_5_matches_10_straight_steps_bit_for_bit(scene, tmp_path, name):
    from splatting.train import train
    from tests.splatting.test_splat_run import _cfg, _straight_and_resumed  # the run tests' schedule and check

    # 40 random points anywhere in the cube: each step's view misses 10-20% of the Gaussians; densified (and an
    # opacity reset at 7) inside the 10 steps
    extra = {"optim.name": name, "init_random": 40, "init_views": 0}
    straight, rest, a, b = _straight_and_resumed(scene, tmp_path, ("step", "exp_avg", "exp_avg_sq"), **extra)
    assert straight["optimizer_state_bytes"] == rest["optimizer_state_bytes"]
    adam = train(_cfg(scene, tmp_path / "adam", **{**extra, "optim.name": "adam"}))
    assert not torch.equal(adam["gaussians"]["means"], straight["gaussians"]["means"])  # the trainer used `name`
    if name == "adam_mini":
        assert a["optimizers"]["shN"]["state"][0]["exp_avg_sq"].shape == (straight["n_gaussians"], 1, 1)
        assert straight["optimizer_state_bytes"] < 0.7 * adam["optimizer_state_bytes"]  # SH degree 1: (23 + 6) / 46
    with pytest.raises(ConfigError, match=rf"cannot resume.*optim.name: '{name}' -> 'adam'"):
        train(_cfg(scene, tmp_path / "b", steps=12, **{**extra, "optim.name": "adam"}))
