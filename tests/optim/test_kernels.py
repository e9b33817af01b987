"""Every Triton kernel against its pure-torch twin, run on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``) and, where CUDA is present, compiled on the GPU, on ragged sizes that exercise the masks
and the loops over blocks."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from genai_train.kernels import use_triton  # noqa: E402
from genai_train.kernels.optim import (  # noqa: E402
    adam_direction_triton,
    channel_norm_ratio_triton,
    mean_sq_ema_triton,
)
from genai_train.optim import OptimConfig, build_optimizer  # noqa: E402
from genai_train.optim.base import adam_direction  # noqa: E402

from .optim_tiny import batches, make_pair, train  # noqa: E402

CUDA = torch.cuda.is_available()
SHAPES = [(37, 19), (1, 5), (2, 1100), (1100, 2)]  # odd sizes, a single row, rows longer than one block


@pytest.fixture
def dev(kernel_device) -> torch.device:
    """tests/conftest.py's kernel_device (interpreter | cuda), under the short name these tests use."""
    return kernel_device


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("shape", SHAPES)
def test_adam_direction_kernel_equals_its_twin(dev, shape):
    g = torch.randn(shape, device=dev)
    m, v = torch.randn(shape, device=dev), torch.rand(shape, device=dev)
    # on CUDA the twin's fused path is torch's fused Adam, which forms 1 - beta2 in float32 (1.3e-5 off); the twin's
    # arithmetic in float64 is the reference there (the kernel takes 1 - beta2 from Python, as the CPU twin does)
    ref_dtype = torch.float64 if dev.type == "cuda" else torch.float32
    m2, v2 = m.to(ref_dtype, copy=True), v.to(ref_dtype, copy=True)
    out = adam_direction_triton(g, m, v, 0.9, 0.999, 1e-6, torch.empty(shape, device=dev))
    ref = adam_direction([g.to(ref_dtype)], [m2], [v2], 3, 0.9, 0.999, 1e-6)[0]
    assert _rel(out, ref) < 1e-6 and _rel(m, m2) < 1e-6 and _rel(v, v2) < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dim", [1, 0, None])
def test_channel_norm_ratio_kernel_equals_its_twin(dev, shape, dim):
    r, rt = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
    s = channel_norm_ratio_triton(r, rt, dim)
    if dim is None:
        ref = torch.linalg.vector_norm(rt) / (torch.linalg.vector_norm(r) + 1e-8)
    else:
        ref = torch.linalg.vector_norm(rt, dim=dim, keepdim=True) / (
            torch.linalg.vector_norm(r, dim=dim, keepdim=True) + 1e-8
        )
    assert s.shape == ref.shape and _rel(s, ref) < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_factored_second_moment_kernel_equals_its_twin(dev, shape):
    g = torch.randn(shape, device=dev)
    row, col = torch.rand(shape[0], device=dev), torch.rand(shape[1], device=dev)
    row2, col2 = row.clone(), col.clone()
    mean_sq_ema_triton(g, row, col, 0.7, 1e-30)
    sq = g * g + 1e-30
    row2.mul_(0.7).add_(sq.mean(dim=-1), alpha=0.3)
    col2.mul_(0.7).add_(sq.mean(dim=-2), alpha=0.3)
    assert _rel(row, row2) < 1e-6 and _rel(col, col2) < 1e-6


@pytest.mark.parametrize("blocks,length", [(4, 37), (1, 1100), (7, 1)])
def test_adam_mini_kernel_equals_its_twin(dev, blocks, length):
    from genai_train.optim.adam_mini import AdamMini

    init = torch.randn(blocks, length, device=dev)
    results = []
    for kernels in ("triton", "torch"):
        p = torch.nn.Parameter(init.clone())
        opt = AdamMini([p], lr=1e-2, weight_decay=0.1, blocks={id(p): blocks}, kernels=kernels)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            p.grad = torch.randn(blocks, length, generator=g).to(dev)
            opt.step()
        results.append((p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["vmean"].clone()))
    for a, b in zip(*results):
        assert _rel(a, b) < 1e-6


@pytest.mark.parametrize("name", ["galore", "apollo", "apollo_mini", "adam_mini", "flora"])
def test_optimizer_with_kernels_equals_its_torch_twin_after_five_steps(dev, name):
    # APOLLO refreshes its (seeded) projection inside the run; GaLore's SVD refresh would see gradients that differ
    # in the last bits and amplify that through near-equal singular values, so it refreshes only at step 0 here
    kw = dict(name=name, lr=1e-2, update_proj_gap=10 if name == "galore" else 3, weight_decay=0.1, kappa=3)
    if name in ("galore", "apollo", "flora"):
        kw["rank"] = 4
    a, b = (model.to(dev) for model in make_pair())
    opt_a = build_optimizer(a, OptimConfig(**kw, kernels="triton"))
    opt_b = build_optimizer(b, OptimConfig(**kw, kernels="torch"))
    data = [x.to(dev) for x in batches(5)]
    train(a, opt_a, data)
    train(b, opt_b, data)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert _rel(pa.detach(), pb.detach()) < 1e-6
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        for key, va in sa.items():
            if isinstance(va, torch.Tensor) and va.is_floating_point():
                # on CUDA torch's fused Adam (the projected methods' twin) forms 1 - beta2 in float32: its second
                # moments sit 1.3e-5 from the kernel's, whose coefficient is exact, APOLLO's ||G s|| (prev_norm) 3e-6,
                # and the other states follow the gradients (1.6e-6 seen); parameters still agree to 1e-6
                tol = 2e-5 if dev.type == "cuda" else 1e-6
                assert _rel(va, sb[key]) < tol, (name, key)


def test_kernel_choice_is_explicit(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.zeros(3)
    assert not use_triton("auto", cpu) and not use_triton("torch", cpu)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        use_triton("triton", cpu)
    with pytest.raises(ValueError, match="kernels='fast'"):
        use_triton("fast", cpu)


def test_auto_runs_only_the_kernels_measured_faster():
    # measured on an H200 (benchmarks/results/*_kernels.json): Adam-mini's update 0.54-0.59 and SteepGS's matrices
    # 0.003-0.008 of their twins' time; the Adam direction 4.8-5.4x slower than torch's fused Adam, APOLLO's channel
    # ratio and Flora's moments tied (0.99-1.13 in the recorded run): auto runs those as twins
    from genai_train.kernels import KERNELS, active_kernels

    active = active_kernels("cuda")
    assert active == ["adam_mini_update", "splitting_matrices"]
    assert set(active) < set(KERNELS)
    assert active_kernels("cpu") == []
    if CUDA:
        t = torch.zeros(3, device="cuda")
        assert not use_triton("auto", t, "adam_direction") and not use_triton("auto", t, "channel_norm_ratio")
        assert use_triton("auto", t, "adam_mini_update")
        assert use_triton("triton", t, "adam_direction")
