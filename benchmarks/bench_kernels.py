"""Kernel vs twin: each fused Triton kernel of ``genai_train.kernels`` timed against its pure-torch twin (CUDA; on the
CPU the twins are what runs, and these timings only run under ``TRITON_INTERPRET=1`` as a dry run of the code)."""

from __future__ import annotations

import statistics
import time

import torch

from genai_train.kernels import triton_available, use_triton
from genai_train.optim.adam_mini import AdamMini
from genai_train.optim.apollo import apollo_scaling
from genai_train.optim.base import adam_direction
from genai_train.optim.flora import adafactor_direction

if triton_available():
    import triton.language as tl
else:  # only the twins run (use_triton says so before any kernel is launched)
    tl = None

# the matrices of one block of LLaMA-1B as the GaLore paper trains it (d 2048, MLP 5461, 24 blocks): the GPU scale,
# reported beside the benchmark GPT's shapes (CPU scale, where every update is a few microseconds of launches)
LLAMA_1B_BLOCK = [(2048, 2048)] * 4 + [(5461, 2048), (5461, 2048), (2048, 5461)]
LLAMA_1B_BLOCKS = 24


def kernel_device() -> torch.device:
    """The device of a ``--kernels-only`` run: CUDA, or the CPU under ``TRITON_INTERPRET=1`` as a dry run of the
    code; anything else exits with what to do."""
    from genai_train.kernels import interpreting

    if torch.cuda.is_available():
        return torch.device("cuda")
    if interpreting():
        return torch.device("cpu")
    raise SystemExit(
        "--kernels-only times the Triton kernels on a CUDA device and there is none here (on the CPU the torch twins "
        "run; TRITON_INTERPRET=1 dry-runs this code through Triton's interpreter, with no meaningful times)"
    )


def write_kernel_result(name: str, config: dict, claims: list[dict], timings: dict, device, out_dir) -> None:
    """Write ``<name>.json`` and print its claims, or, for a dry run on the CPU, say that nothing is written."""
    from genai_train.bench import write_result

    if device.type != "cuda":
        print("dry run through Triton's interpreter: the code ran; its times mean nothing, so nothing is written")
        return
    path = write_result(name, config, claims, {"timings": timings}, out_dir=out_dir)
    for c in claims:
        print(f"{'ok  ' if c['holds'] else 'FAIL'} {c['name']} = {c['value']:.4g} {c['op']} {c['target']}")
    print(f"wrote {path}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, reps: int, device: torch.device) -> float:
    fn()  # compile / warm up
    samples = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def kernels_vs_twins(shapes: list[tuple[int, int]], rank: int, reps: int, device: torch.device) -> dict:
    """Median seconds of each fused update and its twin, summed over ``shapes`` (a model's matrices): the function
    the optimizer calls, once with ``kernels="triton"`` and once with ``"torch"``, so both sides carry the same
    surrounding work (APOLLO's ||G s||, Flora's normalised output, Adam-mini's whole step)."""
    use_triton("triton", torch.empty(0, device=device))  # a clear error where kernels cannot run
    g = [torch.randn(s, device=device) for s in shapes]
    # projected gradients as the optimizers hold them: [m, rank] for tall matrices, [rank, n] for wide ones
    r = [torch.randn((s[0], rank) if s[0] >= s[1] else (rank, s[1]), device=device) for s in shapes]
    m = [torch.zeros_like(x) for x in r]
    v = [torch.rand_like(x) for x in r]
    out = [torch.empty_like(x) for x in r]
    rows = [torch.rand(s[0], device=device) for s in shapes]
    cols = [torch.rand(s[1], device=device) for s in shapes]

    def direction(mode: str) -> None:
        adam_direction(r, m, v, 5, 0.9, 0.999, 1e-6, out=out, kernels=mode)

    def scaling(mode: str) -> None:
        for a, o, x in zip(r, out, g):
            apollo_scaling(a, o, x, "channel", mode)

    def factored(mode: str) -> None:
        for x, a, b in zip(g, rows, cols):
            adafactor_direction(x, a, b, None, 0.9, 1e-30, mode)

    pairs = {"adam_direction": direction, "channel_norm_ratio": scaling, "adafactor_moments": factored}
    out_times = {name: _pair(fn, reps, device) for name, fn in pairs.items()}
    for tensors in (r, m, v, out, rows, cols):
        tensors.clear()  # free them before Adam-mini's copies
    mini = {}
    for mode in ("triton", "torch"):
        params = [torch.nn.Parameter(torch.zeros(s, device=device)) for s in shapes]
        for q, x in zip(params, g):
            q.grad = x
        mini[mode] = AdamMini(params, blocks={id(q): s[0] for q, s in zip(params, shapes)}, kernels=mode)
    out_times["adam_mini_update"] = _pair(lambda mode: mini[mode].step(), reps, device)
    return out_times


def _pair(fn, reps: int, device: torch.device) -> dict:
    tk, tt = _time(lambda: fn("triton"), reps, device), _time(lambda: fn("torch"), reps, device)
    return {"kernel_s": tk, "twin_s": tt, "ratio": tk / tt}


def _touch_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + 1.0, mask=offs < n)


def launch_overhead(reps: int, device: torch.device) -> dict:
    """Median seconds per launch, 100 launches back to back on a 16-float tensor: a one-line Triton kernel through
    ``jit`` (as every kernel here is launched) vs one torch in-place op. What a kernel must amortise."""
    from genai_train.kernels import jit

    x = torch.zeros(16, device=device)
    kernel = jit(_touch_kernel)
    per = 100

    def triton_launches() -> None:
        for _ in range(per):
            kernel[(1,)](x, 16, BLOCK=16)

    def torch_ops() -> None:
        for _ in range(per):
            x.add_(1.0)

    t_triton, t_torch = _time(triton_launches, reps, device) / per, _time(torch_ops, reps, device) / per
    return {"triton_launch_s": t_triton, "torch_op_s": t_torch}


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
