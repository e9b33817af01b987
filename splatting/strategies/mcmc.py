"""MCMC densification: Gaussians as samples of a Markov chain, relocated instead of cloned, split and pruned.

3D Gaussian Splatting as Markov Chain Monte Carlo, Kheradmand et al., NeurIPS 2024,
https://arxiv.org/abs/2404.09591, with the semantics of gsplat's ``MCMCStrategy``. Every ``refine_every``
steps in (refine_start, refine_stop): (1) "dead" Gaussians (opacity <= ``min_opacity``) are moved onto live
ones drawn in proportion to their opacity, and (2) new Gaussians, ``grow_rate`` x N of them up to ``cap_max``,
are added the same way; in both, a Gaussian drawn n-1 times shares its opacity and scale with its n-1 copies
so that the rendered distribution stays the same (paper Eq. 9, :func:`relocation`). After every optimizer
step (3) the means get noise N(0, Sigma) x lr_means x ``noise_lr``, gated to ~0 for opaque Gaussians (paper
Eq. 10-11, the SGLD term). The loss adds ``opacity_reg`` x mean opacity and ``scale_reg`` x mean scale.

The draws come from a CPU ``torch.Generator`` seeded with the run's seed whose state lives in the strategy
state: every rank of a torchrun job draws the same numbers (identical decisions on replicated Gaussians) and
a resumed run continues the same sequence. Unlike gsplat, whose relocated slots keep the Adam moments of the
dead Gaussian, both the dead slot and its source start from zero moments (both are new Gaussians).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from splatting.gaussians import covariance_3d
from splatting.strategies import ops

__all__ = ["MCMCStrategy", "relocation", "relocate", "sample_add", "inject_noise", "N_MAX"]

N_MAX = 51  # a Gaussian shares its mass with at most N_MAX - 1 copies at once (the paper's table size)


def relocation(opacities: Tensor, scales: Tensor, ratios: Tensor, n_max: int = N_MAX) -> tuple[Tensor, Tensor]:
    """Opacity and scale of each of n Gaussians that replace one (opacity o, scale s) (paper Eq. 9).

    o' = 1 - (1 - o)^(1/n);  s' = o / (sum_{i=1}^{n} sum_{k=0}^{i-1} C(i-1, k) (-1)^k o'^(k+1) / sqrt(k+1)) s.
    The double sum is summed over i in closed form (hockey stick: sum_{i=k+1}^{n} C(i-1, k) = C(n, k+1)),
    sum_{k=0}^{n-1} C(n, k+1) (-1)^k o'^(k+1) / sqrt(k+1), and evaluated in float64 (alternating terms).
    opacities [M] in (0, 1), scales [M, 3] (linear), ratios [M] (n, clamped to [1, n_max]) -> [M], [M, 3].
    """
    n = ratios.clamp(1, n_max).to(torch.float64)  # [M]
    o = opacities.to(torch.float64)
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / n)  # [M]
    k = torch.arange(n_max, dtype=torch.float64, device=o.device)  # [K] = 0 .. n_max-1
    kp1 = k + 1
    # C(n, k+1) = exp(lgamma(n+1) - lgamma(k+2) - lgamma(n-k)), zero where k+1 > n
    valid = kp1[None] <= n[:, None]  # [M, K]
    log_binom = (
        torch.lgamma(n[:, None] + 1) - torch.lgamma(kp1[None] + 1) - torch.lgamma((n[:, None] - k[None]).clamp_min(1))
    )
    binom = torch.where(valid, torch.exp(log_binom).round(), torch.zeros((), dtype=torch.float64, device=o.device))
    sign = torch.where(k.remainder(2) == 0, 1.0, -1.0).to(o)  # (-1)^k
    denom = (binom * sign[None] * new_o[:, None] ** kp1[None] / kp1.sqrt()[None]).sum(-1)  # [M]
    coeff = o / denom
    return new_o.to(opacities.dtype), (coeff[:, None] * scales.to(torch.float64)).to(scales.dtype)


def _draw(probs: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` indices drawn with replacement in proportion to ``probs`` [N] (on the CPU generator)."""
    p = probs.detach().float().nan_to_num(0.0).clamp_min(0.0).cpu()
    if float(p.sum()) <= 0:
        p = torch.ones_like(p)
    return torch.multinomial(p, n, replacement=True, generator=generator).to(probs.device)


def _shared_mass(params, sampled: Tensor, min_opacity: float) -> tuple[Tensor, Tensor]:
    """Logit opacities and log scales of the drawn Gaussians once they share their mass with their copies."""
    opac = torch.sigmoid(params["opacities"])[sampled]
    ratios = torch.bincount(sampled, minlength=len(params["opacities"]))[sampled] + 1  # copies + the original
    new_o, new_s = relocation(opac, torch.exp(params["scales"])[sampled], ratios)
    eps = torch.finfo(torch.float32).eps
    new_o = new_o.clamp(min_opacity, 1.0 - eps)
    return torch.logit(new_o), torch.log(new_s)


@torch.no_grad()
def relocate(params, optimizers, dead: Tensor, min_opacity: float, generator: torch.Generator) -> int:
    """Move the Gaussians in ``dead`` [N] onto live ones drawn by opacity; the count does not change.

    A drawn Gaussian and its copies get the opacity and scale of :func:`relocation`; the Adam moments of
    the drawn rows and of the overwritten dead rows start from zero."""
    dead_idx, alive_idx = torch.where(dead)[0], torch.where(~dead)[0]
    if len(dead_idx) == 0 or len(alive_idx) == 0:
        return 0
    sampled = alive_idx[_draw(torch.sigmoid(params["opacities"])[alive_idx], len(dead_idx), generator)]  # [D]
    logit_o, log_s = _shared_mass(params, sampled, min_opacity)

    def param_fn(name: str, p: Tensor) -> Tensor:
        p = p.clone()
        if name == "opacities":
            p[sampled] = logit_o
        elif name == "scales":
            p[sampled] = log_s
        p[dead_idx] = p[sampled]
        return p

    def opt_fn(_, v: Tensor) -> Tensor:
        v = v.clone()
        v[sampled] = 0
        v[dead_idx] = 0
        return v

    ops.update_params(params, optimizers, param_fn, opt_fn)
    return len(dead_idx)


@torch.no_grad()
def sample_add(params, optimizers, n: int, min_opacity: float, generator: torch.Generator) -> int:
    """Append ``n`` copies of Gaussians drawn by opacity (sharing mass as in :func:`relocate`); new Adam rows
    start at zero, existing rows stay where they are."""
    if n <= 0:
        return 0
    sampled = _draw(torch.sigmoid(params["opacities"]), n, generator)  # [n]
    logit_o, log_s = _shared_mass(params, sampled, min_opacity)

    def param_fn(name: str, p: Tensor) -> Tensor:
        p = p.clone()
        if name == "opacities":
            p[sampled] = logit_o
        elif name == "scales":
            p[sampled] = log_s
        return torch.cat([p, p[sampled]])

    ops.update_params(
        params,
        optimizers,
        param_fn,
        lambda _, v: torch.cat([v, torch.zeros((n,) + v.shape[1:], dtype=v.dtype, device=v.device)]),
    )
    return n


@torch.no_grad()
def inject_noise(params, scaler: float, generator: torch.Generator) -> None:
    """means += Sigma eps x sigmoid(100 (1 - o - 0.995)) x ``scaler``, eps ~ N(0, I) (paper Eq. 11; the gate
    is ~1 for transparent Gaussians and ~0 for opaque ones). Sigma is the 3-D covariance."""
    means = params["means"]
    opac = torch.sigmoid(params["opacities"].detach())  # [N]
    gate = torch.sigmoid(100.0 * ((1.0 - opac) - 0.995))  # [N]
    cov = covariance_3d(params["quats"].detach(), torch.exp(params["scales"].detach()))  # [N, 3, 3]
    eps = torch.randn(means.shape, generator=generator).to(means)  # [N, 3]
    noise = torch.einsum("nij,nj->ni", cov, eps * gate[:, None] * scaler)
    means.add_(noise.nan_to_num(0.0, 0.0, 0.0))


@dataclass
class MCMCStrategy:
    """3DGS-MCMC (gsplat's ``MCMCStrategy`` defaults): relocate dead Gaussians, grow to ``cap_max``, add noise."""

    cap_max: int = field(default=1_000_000, metadata={"help": "never more Gaussians than this"})
    noise_lr: float = field(default=5e5, metadata={"help": "position noise = this x means LR x covariance x eps"})
    refine_start: int = field(default=500, metadata={"help": "relocate/add only after this step"})
    refine_stop: int = field(default=25_000, metadata={"help": "no relocation/addition from this step on"})
    refine_every: int = field(default=100, metadata={"help": "relocate/add every N steps"})
    min_opacity: float = field(default=0.005, metadata={"help": "Gaussians with opacity <= this are dead"})
    grow_rate: float = field(default=0.05, metadata={"help": "add this fraction of N Gaussians per refine"})
    opacity_reg: float = field(default=0.01, metadata={"help": "loss + this x mean opacity (paper's L1 on opacity)"})
    scale_reg: float = field(default=0.01, metadata={"help": "loss + this x mean scale (paper's L1 on scales)"})

    accumulates: ClassVar[bool] = False  # no per-view statistics (the trainer skips accumulate / all-reduce)

    def __post_init__(self):
        if self.refine_every < 1:
            raise ValueError(f"strategy.refine_every must be >= 1, got {self.refine_every}")
        if self.cap_max < 1:
            raise ValueError(f"strategy.cap_max must be >= 1, got {self.cap_max}")
        if not 0 < self.min_opacity < 1:
            raise ValueError(f"strategy.min_opacity must be in (0, 1), got {self.min_opacity}")
        if self.grow_rate < 0 or self.noise_lr < 0 or self.opacity_reg < 0 or self.scale_reg < 0:
            raise ValueError("strategy.grow_rate, noise_lr, opacity_reg and scale_reg must be >= 0")

    def initialize_state(self, scene_scale: float = 1.0, seed: int = 0) -> dict:
        """The draws' generator state (the same seed on every rank) and the scene scale."""
        return {"rng": torch.Generator().manual_seed(seed).get_state(), "scene_scale": float(scene_scale)}

    def check_sanity(self, params, optimizers: dict) -> None:
        missing = {"means", "scales", "quats", "opacities"} - set(params.keys())
        if missing:
            raise ValueError(f"MCMC needs parameters {sorted(missing)}")
        if set(params.keys()) != set(optimizers.keys()):
            raise ValueError("one optimizer per parameter is required")

    def step_pre_backward(self, params, optimizers, state: dict, step: int, info: dict) -> None:
        pass

    def accumulate(self, params, state: dict, info: dict) -> None:
        pass

    def regularization(self, params) -> Tensor | float:
        """The paper's opacity and scale regularizers (added to the loss by the trainer)."""
        reg = 0.0
        if self.opacity_reg:
            reg = reg + self.opacity_reg * torch.sigmoid(params["opacities"]).mean()
        if self.scale_reg:
            reg = reg + self.scale_reg * torch.exp(params["scales"]).mean()
        return reg

    def is_refine_step(self, step: int) -> bool:
        return self.refine_start < step < self.refine_stop and step % self.refine_every == 0

    def refine(self, params, optimizers, state: dict, step: int, lr: float | None = None) -> dict:
        """After the optimizer step: relocate and add on schedule, then noise the means with ``lr`` (the means
        LR of the next step, as gsplat reads it after its scheduler step). Returns what happened."""
        gen = torch.Generator()
        gen.set_state(state["rng"].cpu())
        events: dict = {}
        if self.is_refine_step(step):
            dead = torch.sigmoid(params["opacities"].detach()) <= self.min_opacity
            n_reloc = relocate(params, optimizers, dead, self.min_opacity, gen)
            n = len(params["means"])
            n_add = sample_add(params, optimizers, max(0, min(self.cap_max, int((1 + self.grow_rate) * n)) - n),
                               self.min_opacity, gen)  # fmt: skip
            events.update(relocated=n_reloc, added=n_add, n=len(params["means"]))
        if lr is not None and self.noise_lr > 0:
            inject_noise(params, lr * self.noise_lr, gen)
        state["rng"] = gen.get_state()
        return events
