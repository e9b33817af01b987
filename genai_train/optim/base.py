"""Shared machinery of the core optimizers: bucketed vectorized steps, per-layer (in-backward) updates.

Every optimizer here keeps per-parameter state as plain tensors and ints (``step``, moments, projection
matrices, seeds), so ``state_dict()`` loads with ``torch.load(weights_only=True)`` and a save/load in the
middle of a run continues bit-identically.

Per-layer mode (GaLore, Zhao et al. 2024, Sec. 4.3 "per-layer weight updates"): a post-accumulate-grad
hook on every parameter runs that parameter's update inside backward and frees its gradient, so full
gradients of all layers never coexist. ``opt.step()`` afterwards is a no-op for the parameters already
updated and steps any parameter that still holds a gradient. Gradient accumulation, either way:

* ``attach_per_layer(accumulation_steps=k)``: every k-th backward through a parameter updates it (the counts
  run by themselves, so this works inside loops that know nothing of per-layer mode, e.g.
  ``transformers.Trainer`` with ``gradient_accumulation_steps=k``);
* or the loop sets ``opt.step_in_backward = False`` before the backward of every micro-batch but the last.

Clipping: a global gradient norm never exists in this mode, so ``clip_grad_norm_`` after backward sees no
gradient and clips nothing. ``attach_per_layer(clip=c)`` clips each parameter's gradient to norm c instead,
inside its hook (per-parameter clipping, not the global norm); set the loop's own clipping off (``Trainer``:
``max_grad_norm=0``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import torch

from genai_train.kernels import KERNEL_MODES, use_triton
from genai_train.kernels.optim import adam_direction_triton

__all__ = ["CoreOptimizer", "hf_adamw_", "adam_direction"]


def _fused_ok(tensors: list[torch.Tensor]) -> bool:
    t = tensors[0]
    return (
        t.device.type in ("cpu", "cuda")
        and t.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and all(x.device == t.device and x.dtype == t.dtype for x in tensors)
    )


def _fused_adam_(
    params, grads, exp_avgs, exp_avg_sqs, k: int, lr: float, beta1: float, beta2: float, eps: float
) -> None:
    """torch's fused Adam kernel: W -= lr/(1-b1^k) * m / (sqrt(v)/sqrt(1-b2^k) + eps), moments updated."""
    steps = [torch.tensor(float(k), device=params[0].device)] * len(params)
    torch._fused_adam_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=0.0,
        eps=eps,
        amsgrad=False,
        maximize=False,
    )


def hf_adamw_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    k: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """The AdamW of GaLore/APOLLO (the HF ``transformers.AdamW`` skeleton), over lists.

    m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; W -= lr sqrt(1-b2^k)/(1-b1^k) * m / (sqrt(v) + eps);
    then decoupled decay W -= lr * wd * W. eps is added before the bias correction, which is torch's
    convention with eps' = eps / sqrt(1-b2^k): that lets torch's fused kernel do it in one pass.
    """
    bc2_sqrt = math.sqrt(1.0 - beta2**k)
    if _fused_ok(params + grads + exp_avgs + exp_avg_sqs):
        _fused_adam_(params, grads, exp_avgs, exp_avg_sqs, k, lr, beta1, beta2, eps / bc2_sqrt)
    else:
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=-lr * bc2_sqrt / (1.0 - beta1**k))
    if weight_decay > 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)


def adam_direction(
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    k: int,
    beta1: float,
    beta2: float,
    eps: float,
    out: list[torch.Tensor] | None = None,
    kernels: str = "torch",
) -> list[torch.Tensor]:
    """Update the Adam moments of ``grads`` in place and return **-N**, N = m / (sqrt(v) + eps) (GaLore/
    APOLLO's normalised low-rank gradient, no bias correction), fused into one pass where possible.
    ``out``: tensors shaped like ``grads`` to write -N into (else new ones are allocated). ``kernels``: where
    ``use_triton`` says so, the Triton kernel ``adam_direction_triton`` (of which the code below is the twin)."""
    if out is not None and use_triton(kernels, grads[0], "adam_direction"):
        for g, m, v, o in zip(grads, exp_avgs, exp_avg_sqs, out):
            adam_direction_triton(g, m, v, beta1, beta2, eps, o)
        return out
    if _fused_ok(grads + exp_avgs + exp_avg_sqs + (out or [])):
        # fused Adam on a zero "parameter" with lr = (1-b1^k)/sqrt(1-b2^k) leaves exactly -N in it
        if out is None:
            out = [torch.zeros_like(g) for g in grads]
        else:
            torch._foreach_zero_(out)
        bc2_sqrt = math.sqrt(1.0 - beta2**k)
        _fused_adam_(out, grads, exp_avgs, exp_avg_sqs, k, (1.0 - beta1**k) / bc2_sqrt, beta1, beta2, eps / bc2_sqrt)
        return out
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    if out is None:
        out = torch._foreach_div(exp_avgs, denom)
    else:
        torch._foreach_copy_(out, exp_avgs)
        torch._foreach_div_(out, denom)
    torch._foreach_neg_(out)
    return out


def low_rank_groups(params, method: str, unsupported: dict[str, tuple] | None = None) -> list[dict]:
    """Param groups for a low-rank method used directly, the way the reference packages are: a group that gives
    ``rank`` (galore-torch / apollo-torch style, ``{"params": [...], "rank": 128, "update_proj_gap": 200, ...}``)
    is a low-rank group unless it says ``low_rank=False``. Plain parameters, or groups none of which is low-rank,
    would silently make the method plain AdamW: refused with what to do instead. ``unsupported``: a group key
    and the values of it the reference knows but this implementation does not (refused, never ignored)."""
    groups = (
        [dict(g) for g in params]
        if isinstance(params, (list, tuple)) and params and isinstance(params[0], dict)
        else None
    )
    if groups is None:
        raise ValueError(
            f"{method} needs to know which matrices to project: pass param groups as its reference package does, "
            f"e.g. [{{'params': others}}, {{'params': matrices, 'rank': 128, 'update_proj_gap': 200}}], or build it "
            f"with genai_train.optim.build_optimizer(model, OptimConfig(name=...)), which picks the matrices"
        )
    for g in groups:
        if "rank" in g and "low_rank" not in g:
            g["low_rank"] = True
        for key, bad in (unsupported or {}).items():
            if g.get(key) in bad:
                raise ValueError(f"{method}: {key}={g[key]!r} is not supported here; use the default of {key}")
    if not any("low_rank" in g for g in groups):  # (low_rank=False everywhere is a choice, e.g. no matrix saves memory)
        raise ValueError(
            f"{method}: no param group is low-rank (none gives 'rank' or low_rank=True), so every tensor would get "
            f"plain AdamW; add 'rank' to the group of the matrices to project"
        )
    return groups


class CoreOptimizer(torch.optim.Optimizer):
    """Base class: groups parameters that hold a gradient by (group, step count) and hands each bucket
    to ``_update(group, params, t)``; subclasses implement ``_init_state`` and ``_update``.

    Each group has a boolean ``low_rank`` (the parameter gets the method's special treatment) and its
    hyperparameters. ``seed_base``: parameter i (0-based over all groups, in order) gets the integer seed
    ``seed_base + i + 1`` in ``state["seed"]`` (the numbering of the APOLLO and Flora references).
    ``kernels``: ``auto`` | ``triton`` | ``torch``, where the fused Triton kernels run (:mod:`genai_train.kernels`).
    """

    def __init__(self, params, defaults: dict, seed_base: int | None = None, kernels: str = "auto") -> None:
        super().__init__(params, defaults)
        if kernels not in KERNEL_MODES:
            raise ValueError(f"kernels={kernels!r}; choose one of {', '.join(KERNEL_MODES)}")
        self.kernels = kernels  # genai_train.kernels: Triton on CUDA (auto), or always / never
        self.step_in_backward = True
        self.accumulation_steps, self.per_layer_clip = 1, 0.0  # per-layer mode (attach_per_layer)
        self._backwards: dict[int, int] = {}
        self._hooks: list = []
        if seed_base is not None:
            i = 0
            for group in self.param_groups:
                for p in group["params"]:
                    i += 1
                    self.state[p]["seed"] = seed_base + i

    # -- subclass API -----------------------------------------------------------------------------------
    def _init_state(self, group: dict, p: torch.Tensor, state: dict) -> None:
        raise NotImplementedError

    def _update(self, group: dict, params: list[torch.Tensor], t: int) -> None:
        """Update ``params`` (all in ``group``, all with ``state["step"] == t`` before the increment)."""
        raise NotImplementedError

    # -- driver -----------------------------------------------------------------------------------------
    def _step_params(self, group: dict, params: list[torch.Tensor]) -> None:
        buckets: dict[int, list[torch.Tensor]] = defaultdict(list)
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                self._init_state(group, p, state)
            buckets[state["step"]].append(p)
        for t, ps in buckets.items():
            self._update(group, ps, t)
            for p in ps:
                self.state[p]["step"] = t + 1

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_params(group, params)
        return loss

    # -- per-layer mode ---------------------------------------------------------------------------------
    @property
    def per_layer(self) -> bool:
        return bool(self._hooks)

    def attach_per_layer(self, accumulation_steps: int = 1, clip: float = 0.0) -> CoreOptimizer:
        """Step every parameter inside backward, as soon as its gradient is accumulated (module docstring):
        on every ``accumulation_steps``-th backward, after clipping its gradient to norm ``clip`` (0: off).
        Single-process only: under DDP the hook would fire before the gradient all-reduce."""
        if accumulation_steps < 1 or clip < 0:
            raise ValueError(f"accumulation_steps must be >= 1 and clip >= 0, got {accumulation_steps} and {clip}")
        self.accumulation_steps, self.per_layer_clip = accumulation_steps, clip
        self._backwards: dict[int, int] = {}
        if self._hooks:
            return self
        if (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        ):
            raise RuntimeError(
                "per-layer optimizer updates run inside backward, before DDP's gradient "
                "all-reduce; set optim.per_layer=false for multi-process training"
            )
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.requires_grad:
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(gi)))
        return self

    def detach_per_layer(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _make_hook(self, gi: int):
        # the group is looked up at call time: load_state_dict() replaces the group dicts
        def hook(p: torch.Tensor) -> None:
            if p.grad is None:
                return
            n = self._backwards[id(p)] = self._backwards.get(id(p), 0) + 1
            if not self.step_in_backward or n % self.accumulation_steps:
                return
            with torch.no_grad():
                if self.per_layer_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p], self.per_layer_clip)
                self._step_params(self.param_groups[gi], [p])
            p.grad = None

        return hook
