"""The math of HALoS and its baselines as small pure functions on flat parameter vectors.

Notation of the HALoS notes (../shared/reference/halos.md, section 1): a worker's pseudo-gradient is
g = theta_start - theta_end; servers apply pseudo-gradients with delayed Nesterov DN(eta, beta, N)
(Liu et al., "Asynchronous Local-SGD Training for Language Modeling", arXiv 2401.09135, with c = 0).
Every function updates its tensors in place and returns them; state is plain tensors and ints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "DNState",
    "delayed_nesterov",
    "nesterov_outer_step",
    "merge",
    "scaled_local_steps",
    "transfer_seconds",
    "bandwidth_scale",
    "ring_order_bottleneck",
]


@dataclass
class DNState:
    """Delayed Nesterov state: momentum m, accumulator Delta (both [n]) and the count t of updates applied."""

    m: torch.Tensor
    delta: torch.Tensor
    t: int = 0

    @classmethod
    def zeros_like(cls, theta: torch.Tensor) -> DNState:
        return cls(torch.zeros_like(theta), torch.zeros_like(theta), 0)

    def state_dict(self) -> dict:
        return {"m": self.m.clone(), "delta": self.delta.clone(), "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.m.copy_(state["m"])
        self.delta.copy_(state["delta"])
        self.t = int(state["t"])


def delayed_nesterov(theta: torch.Tensor, g: torch.Tensor, s: DNState, eta: float, beta: float, N: int) -> torch.Tensor:
    """One DN(eta, beta, N) update with pseudo-gradient ``g`` [n] (halos.md section 1, `opt.py`):

    1. Delta <- Delta + g;  theta <- theta - eta * g
    2. every N-th update:  m <- beta * m + Delta / N;  theta <- theta - eta * N * beta * m;  Delta <- 0

    With N = 1 this is Nesterov SGD: theta <- theta - eta * (g + beta * m) with m <- beta * m + g.
    """
    s.delta.add_(g)
    theta.sub_(g, alpha=eta)
    s.t += 1
    if s.t % N == 0:
        s.m.mul_(beta).add_(s.delta, alpha=1.0 / N)
        theta.sub_(s.m, alpha=eta * N * beta)
        s.delta.zero_()
    return theta


def nesterov_outer_step(theta: torch.Tensor, g: torch.Tensor, m: torch.Tensor, lr: float, mu: float) -> torch.Tensor:
    """DiLoCo's outer step, Nesterov SGD on the mean pseudo-gradient ``g`` (``torch.optim.SGD(nesterov=True)``):
    m <- mu * m + g;  theta <- theta - lr * (g + mu * m)."""
    m.mul_(mu).add_(g)
    theta.sub_(g + mu * m, alpha=lr)
    return theta


def merge(theta_r: torch.Tensor, theta_g: torch.Tensor, alpha: float) -> torch.Tensor:
    """A local server takes the global model in: theta_r <- (1 - alpha) * theta_r + alpha * theta_g
    (alpha weights the *global* model, as the authors' code does; halos.md section 4)."""
    return theta_r.lerp_(theta_g, alpha)


def scaled_local_steps(H: int, speed: float, rescale: bool = True) -> int:
    """H_i = max(1, ceil(H * s_i)) with s_i the worker's speed over the fastest worker's (`common.py`)."""
    if not rescale:
        return H
    return max(1, math.ceil(H * speed - 1e-9))


def transfer_seconds(nbytes: int, gbps: float, latency_ms: float = 0.0) -> float:
    """Time to move ``nbytes`` over a link: latency + 8 * bytes / bandwidth (`utils.py::get_p2p_comm_time_ms`
    without latency, which the authors' simulator does not model)."""
    return latency_ms / 1e3 + 8.0 * nbytes / (gbps * 1e9)


def bandwidth_scale(model_bytes: int, step_s: float, ref_model_bytes: float, ref_step_s: float) -> float:
    """The factor on every bandwidth that makes moving our model cost the same multiple of our fastest step as
    moving the reference model cost of the reference step: (bytes / bw') / step = (ref_bytes / bw) / ref_step."""
    return (model_bytes / ref_model_bytes) * (ref_step_s / step_s)


def ring_order_bottleneck(bandwidth: list[list[float]]) -> float:
    """The best ring's bottleneck bandwidth over all cyclic orders of the regions (DiLoCo's all-reduce in the
    authors' simulator); the intra-region bandwidth for one region."""
    import itertools

    n = len(bandwidth)
    if n == 1:
        return bandwidth[0][0]
    best = 0.0
    for rest in itertools.permutations(range(1, n)):
        order = (0, *rest)
        best = max(best, min(bandwidth[order[i]][order[(i + 1) % n]] for i in range(n)))
    return best
