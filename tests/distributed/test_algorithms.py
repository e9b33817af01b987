"""The update rules against their closed forms and against torch.optim."""

from __future__ import annotations

import math

import pytest
import torch

from genai_train.dist.algorithms import (
    DNState,
    bandwidth_scale,
    delayed_nesterov,
    merge,
    nesterov_outer_step,
    ring_order_bottleneck,
    scaled_local_steps,
    transfer_seconds,
)
from genai_train.dist.config import load_regions

from .helpers import ROOT


def _dn_closed_form(theta0, gs, eta, beta, N):
    """theta_T = theta_0 - eta * sum_t g_t - eta * N * beta * sum_k m_k, m_k = beta m_{k-1} + mean of block k."""
    theta = theta0 - eta * torch.stack(gs).sum(0)
    m = torch.zeros_like(theta0)
    for k in range(len(gs) // N):
        m = beta * m + torch.stack(gs[k * N : (k + 1) * N]).mean(0)
        theta = theta - eta * N * beta * m
    return theta, m


@pytest.mark.parametrize("N", [1, 2, 3])
def test_delayed_nesterov_equals_its_closed_form(N):
    torch.manual_seed(0)
    theta0 = torch.randn(10, dtype=torch.float64)
    gs = [torch.randn(10, dtype=torch.float64) for _ in range(7)]
    theta, s = theta0.clone(), DNState.zeros_like(theta0)
    for g in gs:
        delayed_nesterov(theta, g, s, eta=0.3, beta=0.8, N=N)
    want, m = _dn_closed_form(theta0, gs, 0.3, 0.8, N)
    assert torch.allclose(theta, want, atol=1e-12)
    assert torch.allclose(s.m, m, atol=1e-12)
    pending = torch.stack(gs[7 - 7 % N :]).sum(0) if 7 % N else torch.zeros_like(theta0)  # not yet in m
    assert s.t == 7 and torch.allclose(s.delta, pending)


def test_delayed_nesterov_with_n1_is_torch_nesterov_sgd():
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(6))
    opt = torch.optim.SGD([p], lr=0.2, momentum=0.9, nesterov=True)
    theta, s = p.detach().clone(), DNState.zeros_like(p.detach())
    for _ in range(5):
        g = torch.randn(6)
        p.grad = g.clone()
        opt.step()
        delayed_nesterov(theta, g, s, eta=0.2, beta=0.9, N=1)
        assert torch.allclose(theta, p.detach(), atol=1e-6)


def test_diloco_outer_step_is_torch_nesterov_sgd():
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.randn(6))
    opt = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True)
    theta, m = p.detach().clone(), torch.zeros(6)
    for _ in range(4):
        g = torch.randn(6)
        p.grad = g.clone()
        opt.step()
        nesterov_outer_step(theta, g, m, lr=0.7, mu=0.9)
        assert torch.allclose(theta, p.detach(), atol=1e-6)


def test_merge_weights_the_global_model_by_alpha():
    local, glob = torch.zeros(3), torch.ones(3)
    assert torch.allclose(merge(local.clone(), glob, 0.25), torch.full((3,), 0.25))
    assert torch.equal(merge(local.clone(), glob, 1.0), glob)


def test_paper_speeds_give_the_slowest_worker_one_step_of_eight():
    regions = load_regions(ROOT / "configs" / "dist" / "paper_4regions.yaml")
    H = [scaled_local_steps(8, s) for s in regions.relative_speeds]
    assert max(H) == 8 and min(H) == 1
    assert max(regions.relative_speeds) / min(regions.relative_speeds) == pytest.approx(0.907 / 0.107)
    assert ring_order_bottleneck(regions.bandwidth_gbps) == pytest.approx(0.127)


def test_bandwidth_scale_keeps_transfer_to_step_ratio():
    ref_bytes, ref_step = 281.7e6, 0.238391
    ours, step = 400_000, 0.01
    k = bandwidth_scale(ours, step, ref_bytes, ref_step)
    for gbps in (0.117, 0.935, 100.0):
        ratio_ref = transfer_seconds(int(ref_bytes), gbps) / ref_step
        assert transfer_seconds(ours, gbps * k) / step == pytest.approx(ratio_ref)
    assert math.isclose(transfer_seconds(10**9 // 8, 1.0, latency_ms=20), 1.02)
