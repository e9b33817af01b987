import math

import pytest
import torch

from diffusion.edm import (
    EDMConfig,
    c_in,
    c_noise,
    c_out,
    c_skip,
    edm_loss,
    edm_weight,
    precondition,
    sample_sigma,
)


def test_preconditioning_and_weight_equal_formulas():
    sd = 0.5
    for s in (0.002, 0.3, 1.0, 80.0):
        t = torch.tensor(s, dtype=torch.float64)
        assert c_skip(t, sd).item() == pytest.approx(sd**2 / (s**2 + sd**2))
        assert c_out(t, sd).item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2))
        assert c_in(t, sd).item() == pytest.approx(1 / math.sqrt(s**2 + sd**2))
        assert c_noise(t).item() == pytest.approx(math.log(s) / 4)
        assert edm_weight(t, sd).item() == pytest.approx((s**2 + sd**2) / (s * sd) ** 2)
        assert edm_weight(t, sd).item() == pytest.approx(1 / c_out(t, sd).item() ** 2)


def test_precondition_concatenates_unscaled_coordinates_after_c_in():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    pos = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    seen = {}

    def raw(net_in, cn):
        seen["in"], seen["cn"] = net_in, cn
        return net_in[:, :3] * 2  # F

    d = precondition(raw, x, sigma, 0.5, pos)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.allclose(seen["in"][:, :3], x / (s**2 + 0.25).sqrt())
    assert torch.equal(seen["in"][:, 3:], pos)
    assert torch.allclose(seen["cn"], sigma.log() / 4)
    expect = 0.25 / (s**2 + 0.25) * x + s * 0.5 / (s**2 + 0.25).sqrt() * (2 * x / (s**2 + 0.25).sqrt())
    assert torch.allclose(d, expect)


def test_loss_is_weighted_pixel_sum_and_sigma_is_lognormal():
    y = torch.randn(3, 2, 2, 2)
    n = torch.randn_like(y)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    loss = edm_loss(lambda x, s: torch.zeros_like(x), y, sigma, n, 0.5)
    assert torch.allclose(loss, edm_weight(sigma, 0.5) * y.square().flatten(1).sum(1))
    ln = sample_sigma(200_000, EDMConfig(), torch.Generator().manual_seed(0)).log()
    assert ln.mean().item() == pytest.approx(-1.2, abs=0.01) and ln.std().item() == pytest.approx(1.2, abs=0.01)


def test_our_preconditioning_matches_diffusers_edm_scheduler():
    from diffusers import EDMEulerScheduler

    sched = EDMEulerScheduler(sigma_data=0.5)
    x, f = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    s = torch.tensor(2.5)
    assert torch.allclose(sched.precondition_inputs(x, s), c_in(s, 0.5) * x)
    assert torch.allclose(sched.precondition_noise(s), c_noise(s))
    assert torch.allclose(sched.precondition_outputs(x, f, s), c_skip(s, 0.5) * x + c_out(s, 0.5) * f)
