"""SteepGS strategy on the pure-PyTorch renderer: saddle detection, split direction, children and state."""

from __future__ import annotations

import pytest
import torch

from splatting.render.torch_raster import rasterize
from splatting.strategies import ops
from splatting.strategies.steepgs import SteepGSStrategy, half_opacity, predicted_decrease, steepest_offsets

H = W = 16


def steepest_split(params, optimizers, state, mask, directions, halve_opacity=True, generator=None):
    """SteepGS's split as the strategy does it: offsets along v_min, half opacity, through ``ops.split``."""
    sel = torch.where(mask)[0]
    offsets = steepest_offsets(params["scales"][sel], directions[sel], generator)
    child_opac = half_opacity(params["opacities"][sel]) if halve_opacity else None
    ops.split(params, optimizers, state, mask, offsets, child_opac)


def _camera():
    viewmats = torch.eye(4)[None]  # camera at the origin looking down +z
    Ks = torch.tensor([[[20.0, 0, 8.0], [0, 20.0, 8.0], [0, 0, 1]]])
    return viewmats, Ks


def _render(means, log_scales, quats, opac_logit, colors):
    viewmats, Ks = _camera()
    img, _, info = rasterize(
        means,
        quats,
        torch.exp(log_scales),
        torch.sigmoid(opac_logit),
        colors,
        viewmats,
        Ks,
        W,
        H,
        backgrounds=torch.zeros(1, 3),
    )
    info["viewmats"], info["Ks"] = viewmats, Ks
    return img, info


def _two_blob_target():
    means = torch.tensor([[-1.0, 0.0, 4.0], [1.0, 0.0, 4.0]])  # 5 px left and right of the centre
    scales = torch.full((2, 3), 0.3).log()
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2)
    img, _ = _render(means, scales, quats, torch.full((2,), 3.0), torch.ones(2, 3))
    return img.detach()


def _one_wide_gaussian():
    return torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.tensor([[0.0, 0.0, 4.0]])),
            "scales": torch.nn.Parameter(torch.tensor([[0.6, 0.3, 0.3]]).log()),  # 3 px wide: between the blobs
            "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]])),
            "opacities": torch.nn.Parameter(torch.tensor([0.5])),
            "colors": torch.nn.Parameter(torch.ones(1, 3)),
        }
    )


def _loss(params, target):
    img, info = _render(params["means"], params["scales"], params["quats"], params["opacities"], params["colors"])
    return ((img - target) ** 2).mean(), info


def _accumulated(strategy, params, target):
    state = strategy.initialize_state()
    loss, info = _loss(params, target)
    strategy.step_pre_backward(params, {}, state, 0, info)
    loss.backward()
    strategy._accumulate(params, state, info)
    return loss, info, state


def test_gaussian_fitting_two_blobs_is_a_saddle_and_v_min_points_at_the_blobs():
    params = _one_wide_gaussian()
    strategy = SteepGSStrategy(grow_grad2d=0.0, min_decrease_pixels=0)
    _, _, state = _accumulated(strategy, params, _two_blob_target())
    assert params["means"].grad[0, :2].norm() < 1e-6, "by symmetry the parent cannot move sideways"
    mask, lam, v = strategy.candidates(params, state)
    assert mask.item() and lam.item() < 0
    assert abs(v[0, 0].item()) > 0.99, f"v_min={v[0].tolist()} should point along x, towards the blobs"


@pytest.mark.parametrize("opacity_logit", [-1.0, 2.0])
def test_inv_cov_estimator_is_opacity_gradient_times_inverse_covariance(opacity_logit):
    """The official estimator: lambda_min < 0 iff o dL/do < 0, and then v_min is the shortest axis."""
    params = _one_wide_gaussian()
    with torch.no_grad():
        params["opacities"].fill_(opacity_logit)
    strategy = SteepGSStrategy(estimator="inv_cov", grow_grad2d=0.0, min_decrease_pixels=0)
    _, info, state = _accumulated(strategy, params, _two_blob_target())
    c = (info["opacities"].detach() * info["opacities"].grad).item()
    mask, lam, v = strategy.candidates(params, state)
    assert bool(mask.item()) == (c < 0)
    s_min = torch.exp(params["scales"].detach()).min().item()
    if c < 0:
        assert lam.item() == pytest.approx(c / s_min**2, rel=1e-4)
        assert abs(v[0, 0].item()) < 1e-4, "the shortest axis is y or z, never the long x axis"


def test_split_along_v_min_lowers_the_loss_more_than_random_directions():
    target = _two_blob_target()
    params = _one_wide_gaussian()
    strategy = SteepGSStrategy(grow_grad2d=0.0, min_decrease_pixels=0)
    state = strategy.initialize_state()
    loss, info = _loss(params, target)
    strategy.step_pre_backward(params, {}, state, 0, info)
    loss.backward()
    strategy._accumulate(params, state, info)
    _, _, v = strategy.candidates(params, state)

    def loss_after_split(direction: torch.Tensor, length: float = 1.0) -> float:
        p = {k: t.detach() for k, t in params.items()}
        child = {
            "means": torch.cat([p["means"] + length * direction, p["means"] - length * direction]),
            "scales": p["scales"].repeat(2, 1),
            "quats": p["quats"].repeat(2, 1),
            "opacities": torch.logit(0.5 * torch.sigmoid(p["opacities"])).repeat(2),
            "colors": p["colors"].repeat(2, 1),
        }
        return _loss(child, target)[0].item()

    base = loss.item()
    steep = loss_after_split(v[0])
    assert steep < base
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        r = torch.randn(3, generator=g)
        r = r / r.norm()
        if abs(r @ v[0]) < 0.9:
            assert steep < loss_after_split(r)


def test_children_opacity_scales_and_optimizer_rows():
    g = torch.Generator().manual_seed(0)
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.randn(3, 3, generator=g)),
            "scales": torch.nn.Parameter(torch.randn(3, 3, generator=g) * 0.1 - 2),
            "quats": torch.nn.Parameter(torch.randn(3, 4, generator=g)),
            "opacities": torch.nn.Parameter(torch.randn(3, generator=g)),
        }
    )
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    for p in params.values():
        p.grad = torch.ones_like(p)
    for o in optimizers.values():
        o.step()
    before = {k: p.detach().clone() for k, p in params.items()}
    moments = {k: optimizers[k].state[params[k]]["exp_avg"].clone() for k in params}
    state = {"grad2d": torch.tensor([1.0, 2.0, 3.0]), "count": torch.ones(3), "S": torch.zeros(3, 3, 3)}
    directions = torch.nn.functional.normalize(torch.randn(3, 3, generator=g), dim=-1)
    steepest_split(
        params,
        optimizers,
        state,
        torch.tensor([False, True, False]),
        directions,
        generator=torch.Generator().manual_seed(1),
    )
    assert len(params["means"]) == 4
    kept, children = [0, 2], [2, 3]  # survivors first, then the two children
    assert torch.equal(params["means"][:2], before["means"][kept])
    c0, c1 = params["means"][children] - before["means"][1]
    # one child on each side of the parent along v_min (step lengths drawn independently per child)
    torch.testing.assert_close(torch.nn.functional.normalize(c0, dim=0), directions[1])
    torch.testing.assert_close(torch.nn.functional.normalize(c1, dim=0), -directions[1])
    torch.testing.assert_close(torch.exp(params["scales"][children]), torch.exp(before["scales"][1]).expand(2, 3) / 1.6)
    torch.testing.assert_close(
        torch.sigmoid(params["opacities"][children]), (0.5 * torch.sigmoid(before["opacities"][1])).expand(2)
    )
    torch.testing.assert_close(params["quats"][children], before["quats"][1].expand(2, 4))
    for k in params:
        st = optimizers[k].state[params[k]]
        assert torch.equal(st["exp_avg"][:2], moments[k][kept])
        assert torch.count_nonzero(st["exp_avg"][2:]) == 0 and torch.count_nonzero(st["exp_avg_sq"][2:]) == 0
        assert optimizers[k].param_groups[0]["params"][0] is params[k]
    assert state["grad2d"].tolist() == [1.0, 3.0, 2.0, 2.0] and state["S"].shape == (4, 3, 3)


@pytest.mark.parametrize("eps", [0.02, 0.05])
def test_second_order_prediction_matches_the_loss_change_of_a_split(eps):
    """1/2 eps^2 lambda_min (S in loss units) predicts what splitting at +-eps v_min, half opacity, really does.

    The split with zero offset is the reference, so the alpha-compositing change of two half-opacity copies
    (not part of the paper's additive expansion) cancels; what remains is the eps^2 term.
    """
    target = _two_blob_target()
    params = _one_wide_gaussian()
    strategy = SteepGSStrategy(estimator="exact", min_decrease_pixels=0)
    _, _, state = _accumulated(strategy, params, target)
    _, lam, v = strategy.candidates(params, state)

    def split_loss(offset):
        p = {k: t.detach() for k, t in params.items()}
        children = {
            "means": torch.cat([p["means"] + offset * v, p["means"] - offset * v]),
            "scales": p["scales"].repeat(2, 1),
            "quats": p["quats"].repeat(2, 1),
            "opacities": torch.logit(0.5 * torch.sigmoid(p["opacities"])).repeat(2),
            "colors": p["colors"].repeat(2, 1),
        }
        return _loss(children, target)[0].item()

    actual = split_loss(eps) - split_loss(0.0)
    predicted = 0.5 * eps**2 * lam.item()
    assert predicted < 0 and 0.7 < actual / predicted < 1.3


def test_min_decrease_keeps_only_splits_predicted_to_lower_the_loss_enough():
    target = _two_blob_target()
    params = _one_wide_gaussian()
    strategy = SteepGSStrategy(estimator="exact", min_decrease_pixels=0)
    _, _, state = _accumulated(strategy, params, target)
    _, lam, _ = strategy.candidates(params, state)
    pred = predicted_decrease(params["scales"].detach(), lam)
    torch.testing.assert_close(pred, 0.5 * (torch.exp(params["scales"].detach()) ** 2).sum(-1) * lam)
    assert pred.item() < 0
    for factor, picked in ((0.5, True), (2.0, False)):
        strategy = SteepGSStrategy(
            estimator="exact", grow_grad2d=0.0, min_decrease=factor * -pred.item(), min_decrease_pixels=0
        )
        assert strategy.candidates(params, state)[0].tolist() == [picked]


def test_default_bar_is_a_share_of_one_average_pixels_loss():
    """min_decrease_pixels=k: split only if the predicted decrease beats k x (view loss / pixels per view)."""
    target = _two_blob_target()
    params = _one_wide_gaussian()
    probe = SteepGSStrategy(estimator="exact", grow_grad2d=0.0, min_decrease_pixels=0)
    loss, info, state = _accumulated(probe, params, target)
    _, lam, _ = probe.candidates(params, state)
    pred = -predicted_decrease(params["scales"].detach(), lam).item()
    bar = loss.item() / (info["width"] * info["height"])  # one average pixel's share of the loss
    assert pred > 0
    for k, picked in ((0.5 * pred / bar, True), (2.0 * pred / bar, False)):
        strategy = SteepGSStrategy(estimator="exact", grow_grad2d=0.0, min_decrease_pixels=k)
        state = strategy.initialize_state()
        strategy.step_pre_backward(params, {}, state, 0, info)
        info["loss"] = loss.detach()
        strategy._accumulate(params, state, info)
        strategy._accumulate(params, state, info)  # the bar is a mean over views: two equal views, same bar
        assert float(state["loss_px"][0] / state["loss_px"][1]) == pytest.approx(bar, rel=1e-6)
        assert strategy.candidates(params, state)[0].tolist() == [picked]
    with pytest.raises(ValueError, match=r"info\['loss'\]"):
        strategy._accumulate(params, strategy.initialize_state(), {k: v for k, v in info.items() if k != "loss"})


def test_opacity_halving_can_be_turned_off():
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.zeros(1, 3)),
            "scales": torch.nn.Parameter(torch.zeros(1, 3)),
            "opacities": torch.nn.Parameter(torch.tensor([0.7])),
        }
    )
    steepest_split(params, {}, {}, torch.tensor([True]), torch.tensor([[1.0, 0, 0]]), halve_opacity=False)
    torch.testing.assert_close(params["opacities"].detach(), torch.tensor([0.7, 0.7]))


def test_bad_strategy_options_are_named():
    with pytest.raises(ValueError, match="split_threshold must be negative"):
        SteepGSStrategy(split_threshold=0.0)
    with pytest.raises(ValueError, match="choose exact or inv_cov"):
        SteepGSStrategy(estimator="approx")
    with pytest.raises(ValueError, match="min_decrease must be >= 0"):
        SteepGSStrategy(min_decrease=-1e-6)
    with pytest.raises(ValueError, match="min_decrease_pixels must be >= 0"):
        SteepGSStrategy(min_decrease_pixels=-1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (compares with gsplat's CUDA rasterizer)")
def test_both_renderers_pick_the_same_candidates():
    from splatting.render import render

    g = torch.Generator().manual_seed(0)
    n = 64
    base = {
        "means": torch.randn(n, 3, generator=g) * 0.6 + torch.tensor([0.0, 0.0, 4.0]),
        "scales": torch.rand(n, 3, generator=g) * 0.2 + 0.05,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        "opacities": torch.rand(n, generator=g) * 0.8 + 0.1,
        "colors": torch.rand(n, 3, generator=g),
    }
    target = torch.rand(1, H, W, 3, generator=g)
    viewmats, Ks = _camera()
    picks = {}
    for backend in ("torch", "gsplat"):
        p = {k: v.cuda().requires_grad_(True) for k, v in base.items()}
        img, _, info = render(
            p["means"],
            p["quats"],
            p["scales"],
            p["opacities"],
            p["colors"],
            viewmats.cuda(),
            Ks.cuda(),
            W,
            H,
            backend=backend,
        )
        strategy = SteepGSStrategy(grow_grad2d=0.0, min_decrease_pixels=0)
        state = strategy.initialize_state()
        strategy.step_pre_backward(p, {}, state, 0, info)
        ((img - target.cuda()) ** 2).mean().backward()
        params = {"means": p["means"], "scales": p["scales"].log(), "quats": p["quats"]}
        strategy._accumulate(params, state, info)
        picks[backend] = strategy.candidates(params, state)
    assert torch.equal(picks["torch"][0], picks["gsplat"][0])
    torch.testing.assert_close(picks["torch"][1], picks["gsplat"][1], rtol=1e-3, atol=1e-7)


def test_inverse_covariance_is_closed_form_and_finite_for_degenerate_scales():
    from splatting.gaussians import covariance_3d, inverse_covariance_3d

    quats, log_s = torch.randn(4, 4), torch.randn(4, 3) * 0.5
    inv = inverse_covariance_3d(quats, log_s)
    eye = torch.eye(3).expand(4, 3, 3)
    assert torch.allclose(inv @ covariance_3d(quats, log_s.exp()), eye, atol=1e-4)
    degenerate = torch.tensor([[-200.0, 0.0, 0.0], [200.0, 1.0, 1.0], [float("-inf"), 0.0, 0.0], [-20.0, -20, -20]])
    assert torch.isfinite(inverse_covariance_3d(quats, degenerate)).all()


@pytest.mark.parametrize("estimator", ["exact", "inv_cov"])
def test_estimators_stay_finite_on_degenerate_gaussians(estimator):
    """Zero and huge scales, zero opacity and duplicate points: no error, finite matrices and candidates."""
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.tensor([[0.0, 0, 4], [0.0, 0, 4], [0.5, 0, 4], [-0.5, 0, 4]])),
            "scales": torch.nn.Parameter(
                torch.tensor([[-30.0, 0.3, 0.3], [0.3, 0.3, 0.3], [6.0, 6, 6], [-1.0, -1, -1]])
            ),
            "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]] * 4)),
            "opacities": torch.nn.Parameter(torch.tensor([0.5, -30.0, 0.5, 0.5])),
            "colors": torch.nn.Parameter(torch.ones(4, 3)),
        }
    )
    strategy = SteepGSStrategy(estimator=estimator, grow_grad2d=0.0, min_decrease_pixels=0)
    _, _, state = _accumulated(strategy, params, _two_blob_target())
    mask, lam, vec = strategy.candidates(params, state)
    assert torch.isfinite(state["S"]).all() and torch.isfinite(lam).all() and torch.isfinite(vec).all()
