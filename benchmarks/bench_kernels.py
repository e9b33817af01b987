"""Kernel vs twin: each fused Triton kernel of ``genai_train.kernels`` timed against its pure-torch twin on the
shapes of the optimizer benchmark's GPT (CUDA only; on the CPU the twins are what runs)."""

from __future__ import annotations

import statistics
import time

import torch

from genai_train.kernels import use_triton
from genai_train.kernels.optim import (
    adam_direction_triton,
    adam_mini_update_triton,
    channel_norm_ratio_triton,
    mean_sq_ema_triton,
)
from genai_train.optim.adam_mini import AdamMini
from genai_train.optim.apollo import apollo_scaling
from genai_train.optim.base import adam_direction


def _time(fn, reps: int, device: torch.device) -> float:
    fn()  # compile / warm up
    samples = []
    for _ in range(reps):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def kernels_vs_twins(shapes: list[tuple[int, int]], rank: int, reps: int, device: torch.device) -> dict:
    """Median seconds of each kernel and its twin, summed over ``shapes`` (the benchmark model's matrices)."""
    use_triton("triton", torch.empty(0, device=device))  # a clear error where kernels cannot run
    g = [torch.randn(s, device=device) for s in shapes]
    r = [torch.randn(s[0], rank, device=device) for s in shapes]  # projected gradients, tall
    m = [torch.zeros_like(x) for x in r]
    v = [torch.rand_like(x) for x in r]
    out = [torch.empty_like(x) for x in r]
    rows = [torch.rand(s[0], device=device) for s in shapes]
    cols = [torch.rand(s[1], device=device) for s in shapes]
    p = [torch.randn(s, device=device) for s in shapes]
    pm = [torch.zeros_like(x) for x in p]
    pv = [torch.zeros(s[0], 1, device=device) for s in shapes]
    params = [torch.nn.Parameter(x.clone()) for x in p]
    mini = AdamMini(params, blocks={id(q): s[0] for q, s in zip(params, shapes)}, kernels="torch")
    pairs = {
        "adam_direction": (
            lambda: [adam_direction_triton(*a, 0.9, 0.999, 1e-6, o) for *a, o in zip(r, m, v, out)],
            lambda: [adam_direction([a], [b], [c], 5, 0.9, 0.999, 1e-6, out=[o]) for a, b, c, o in zip(r, m, v, out)],
        ),
        "channel_norm_ratio": (
            lambda: [channel_norm_ratio_triton(a, o, 1) for a, o in zip(r, out)],
            lambda: [apollo_scaling(a, o, x, "channel", "torch") for a, o, x in zip(r, out, g)],
        ),
        "adam_mini_update": (
            lambda: [
                adam_mini_update_triton(*a, s[0], 5, 1e-3, 0.9, 0.999, 1e-8, 0.0) for *a, s in zip(p, g, pm, pv, shapes)
            ],
            lambda: _adam_mini_twin(mini, g),
        ),
        "adafactor_moments": (
            lambda: [mean_sq_ema_triton(x, a, b, 0.9, 1e-30) for x, a, b in zip(g, rows, cols)],
            lambda: [_moments_twin(x, a, b) for x, a, b in zip(g, rows, cols)],
        ),
    }
    out_times = {}
    for name, (kernel, twin) in pairs.items():
        tk, tt = _time(kernel, reps, device), _time(twin, reps, device)
        out_times[name] = {"kernel_s": tk, "twin_s": tt, "ratio": tk / tt}
    return out_times


def _moments_twin(g: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> None:
    """The moment lines of ``adafactor_direction`` (the kernel's twin), alone."""
    sq = g * g
    sq.add_(1e-30)
    row.mul_(0.9).add_(sq.mean(dim=-1), alpha=0.1)
    col.mul_(0.9).add_(sq.mean(dim=-2), alpha=0.1)


def _adam_mini_twin(opt: AdamMini, grads: list[torch.Tensor]) -> None:
    for p, g in zip(opt.param_groups[0]["params"], grads):
        p.grad = g
    opt.step()


def steepgs_kernel_vs_twin(n: int, views: int, reps: int, device: torch.device) -> dict:
    """SteepGS's fused accumulation of splitting matrices vs its torch twin on ``n`` random visible Gaussians."""
    from splatting.strategies.steepgs import SteepGSStrategy

    use_triton("triton", torch.empty(0, device=device))
    g = torch.Generator(device=device).manual_seed(0)
    means = torch.rand(n, 3, generator=g, device=device) + torch.tensor([0.0, 0.0, 3.0], device=device)
    info = {
        "conics": torch.rand(views, n, 3, generator=g, device=device).requires_grad_(),
        "opacities": torch.rand(views, n, generator=g, device=device).requires_grad_(),
        "radii": torch.ones(views, n, 2, dtype=torch.int32, device=device),
        "viewmats": torch.eye(4, device=device).repeat(views, 1, 1),
        "Ks": torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]], device=device).repeat(views, 1, 1),
    }
    (info["conics"].sum() + info["opacities"].sum()).backward()
    params = {"means": means}
    out = {}
    for mode in ("triton", "torch"):
        s = SteepGSStrategy(kernels=mode)
        state = {**s.initialize_state(), "S": torch.zeros(n, 3, 3, device=device)}
        out[mode] = _time(lambda s=s, state=state: s._accumulate_matrices(params, state, info), reps, device)
    return {"kernel_s": out["triton"], "twin_s": out["torch"], "ratio": out["triton"] / out["torch"]}
