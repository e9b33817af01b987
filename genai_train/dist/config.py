"""``dist.*``: which algorithm trains across regions, its paper defaults, and the regions file (link model).

A regions file describes a geo-distributed setup (the HALoS paper's is ``configs/dist/paper_4regions.yaml``)::

    # config: genai_train.dist.config:Regions
    bandwidth_gbps: [[100, 0.537], [0.537, 100]]   # R x R, symmetric; the diagonal is the intra-region link
    latency_ms: [[0, 40], [40, 0]]                  # optional, R x R (the paper's simulator has none)
    worker_speeds: [[1.0, 0.5], [0.9, 0.3]]        # one list per region: relative compute speed per worker
    reference: {model_mb: 281.7, step_ms: 238.391} # optional: rescale bandwidths to this model and step time

With ``reference`` the bandwidths are multiplied by one factor so that moving one model over any link costs the
same multiple of the fastest worker's step time as moving the reference model did at the reference step time
(:func:`genai_train.dist.algorithms.bandwidth_scale`); latencies are scaled by the step-time ratio alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from genai_train.config import ConfigError, load_config

__all__ = [
    "DistConfig",
    "HalosConfig",
    "DiLoCoConfig",
    "AsyncLocalSGDConfig",
    "Regions",
    "Reference",
    "load_regions",
    "Layout",
]

Algo = Literal["ddp", "diloco", "async_local_sgd", "halos"]
ALGOS = ("ddp", "diloco", "async_local_sgd", "halos")


@dataclass
class HalosConfig:
    """HALoS (Kim et al., ICML 2025, arXiv 2506.04531); defaults of the authors' run_halos.sh."""

    local_steps: int = field(default=8, metadata={"help": "H: local steps of the fastest worker per round"})
    push_every: int = field(default=32, metadata={"help": "K: worker updates a local server applies per push"})
    merge_alpha: float = field(default=0.25, metadata={"help": "alpha: weight of the global model in a merge"})
    local_lr: float = field(default=0.2, metadata={"help": "eta_l of the local servers' delayed Nesterov"})
    local_momentum: float = field(default=0.9, metadata={"help": "beta_l of the local servers' delayed Nesterov"})
    local_delay: int = field(default=16, metadata={"help": "N_l: updates between momentum steps (local servers)"})
    global_lr: float = field(default=0.15, metadata={"help": "eta_g of the global server's delayed Nesterov"})
    global_momentum: float = field(default=0.5, metadata={"help": "beta_g of the global server's delayed Nesterov"})
    global_delay: int = field(default=2, metadata={"help": "N_g: updates between momentum steps (global server)"})

    def __post_init__(self):
        _positive(local_steps=self.local_steps, push_every=self.push_every)
        _positive(local_delay=self.local_delay, global_delay=self.global_delay)
        if not 0.0 <= self.merge_alpha <= 1.0:
            raise ValueError(f"dist.halos.merge_alpha must be in [0, 1], got {self.merge_alpha}")
        _momenta(local_momentum=self.local_momentum, global_momentum=self.global_momentum)


@dataclass
class AsyncLocalSGDConfig:
    """Async Local-SGD (Liu et al., arXiv 2401.09135): one server, delayed Nesterov; HALoS paper's baseline."""

    local_steps: int = field(default=32, metadata={"help": "H: local steps of the fastest worker per round"})
    lr: float = field(default=0.05, metadata={"help": "eta of the server's delayed Nesterov"})
    momentum: float = field(default=0.9, metadata={"help": "beta of the server's delayed Nesterov"})
    delay: int = field(default=32, metadata={"help": "N: updates between momentum steps"})

    def __post_init__(self):
        _positive(local_steps=self.local_steps, delay=self.delay)
        _momenta(momentum=self.momentum)


@dataclass
class DiLoCoConfig:
    """DiLoCo (Douillard et al., arXiv 2311.08105): synchronous rounds, Nesterov SGD on the mean pseudo-gradient."""

    local_steps: int = field(default=32, metadata={"help": "H: local steps of the fastest worker per round"})
    outer_lr: float = field(default=0.7, metadata={"help": "outer Nesterov SGD learning rate"})
    outer_momentum: float = field(default=0.9, metadata={"help": "outer Nesterov SGD momentum"})

    def __post_init__(self):
        _positive(local_steps=self.local_steps)
        _momenta(outer_momentum=self.outer_momentum)


def _positive(**values: int) -> None:
    for k, v in values.items():
        if v < 1:
            raise ValueError(f"dist.*.{k} must be >= 1, got {v}")


def _momenta(**values: float) -> None:
    for k, v in values.items():
        if not 0.0 <= v < 1.0:
            raise ValueError(f"dist.*.{k} must be in [0, 1), got {v}")


@dataclass
class DistConfig:
    """Training across regions joined by slow links (``ddp`` = plain torchrun DDP, the default)."""

    algo: Algo = field(default="ddp", metadata={"help": "ddp | diloco | async_local_sgd | halos"})
    regions: str = field(
        default="", metadata={"help": "regions YAML (bandwidth/latency matrix, worker speeds); configs/dist/"}
    )
    simulate: bool = field(
        default=False, metadata={"help": "run every role in this process on a virtual clock (no torchrun)"}
    )
    step_ms: float = field(
        default=0.0, metadata={"help": "fastest worker's compute per step for the simulator; 0 = measure it here"}
    )
    rescale_local_steps: bool = field(
        default=True, metadata={"help": "H_i = max(1, ceil(H * speed_i)): slower workers do fewer local steps"}
    )
    emulate_speeds: bool = field(
        default=True, metadata={"help": "real runs: a worker of speed s sleeps (1/s - 1) x its step time per step"}
    )
    eval_every_s: float = field(
        default=0.0, metadata={"help": "keep the global model every N (virtual or real) seconds for the val curve"}
    )
    halos: HalosConfig = field(default_factory=HalosConfig)
    diloco: DiLoCoConfig = field(default_factory=DiLoCoConfig)
    async_local_sgd: AsyncLocalSGDConfig = field(default_factory=AsyncLocalSGDConfig)

    def __post_init__(self):
        if self.algo not in ALGOS:
            raise ValueError(f"dist.algo={self.algo!r}; choose one of {', '.join(ALGOS)}")
        if self.algo != "ddp" and not self.regions:
            raise ValueError(
                f"dist.algo={self.algo} needs a regions file: pass --dist.regions=configs/dist/two_regions.yaml "
                "(or configs/dist/paper_4regions.yaml)"
            )
        if self.simulate and self.algo == "ddp":
            raise ValueError("dist.simulate=true runs diloco, async_local_sgd or halos; set --dist.algo too")
        if self.step_ms < 0 or self.eval_every_s < 0:
            raise ValueError("dist.step_ms and dist.eval_every_s must be >= 0")

    @property
    def local_steps(self) -> int:
        return {"halos": self.halos.local_steps, "diloco": self.diloco.local_steps}.get(
            self.algo, self.async_local_sgd.local_steps
        )


@dataclass
class Reference:
    """The setting whose communication-to-compute ratio a regions file reproduces (0 = use bandwidths as given)."""

    model_mb: float = field(default=0.0, metadata={"help": "bytes of the reference model / 1e6 (fp32 payload)"})
    step_ms: float = field(default=0.0, metadata={"help": "the reference's step time on its fastest worker"})

    def __post_init__(self):
        if (self.model_mb > 0) != (self.step_ms > 0) or self.model_mb < 0 or self.step_ms < 0:
            raise ValueError("reference.model_mb and reference.step_ms must both be > 0 (or both left out)")


@dataclass
class Regions:
    """A regions file: link model (``bandwidth_gbps[a][b]``, ``latency_ms[a][b]``) and worker speeds per region."""

    worker_speeds: list[list[float]] = field(
        default_factory=list, metadata={"help": "one list per region: each worker's relative compute speed"}
    )
    bandwidth_gbps: list[list[float]] = field(
        default_factory=list, metadata={"help": "R x R symmetric matrix; the diagonal is the intra-region link"}
    )
    latency_ms: list[list[float]] = field(
        default_factory=list, metadata={"help": "R x R symmetric matrix of one-way latencies; empty = zeros"}
    )
    reference: Reference = field(default_factory=Reference)

    def __post_init__(self):
        speeds = self.worker_speeds
        if not speeds or any(not region for region in speeds):
            raise ValueError("worker_speeds must hold one non-empty list of worker speeds per region")
        if any(s <= 0 for region in speeds for s in region):
            raise ValueError("every worker speed must be > 0")
        n = len(speeds)
        for key in ("bandwidth_gbps", "latency_ms"):
            m = getattr(self, key)
            if key == "latency_ms" and not m:
                continue
            if len(m) != n or any(len(row) != n for row in m):
                raise ValueError(f"{key} must be an {n} x {n} matrix (one row per region; {n} regions have workers)")
            if any(m[a][b] != m[b][a] for a in range(n) for b in range(n)):
                raise ValueError(f"{key} must be symmetric (the link a->b equals b->a)")
        if any(x <= 0 for row in self.bandwidth_gbps for x in row):
            raise ValueError("every bandwidth must be > 0 Gbps")
        if any(x < 0 for row in self.latency_ms for x in row):
            raise ValueError("latencies must be >= 0 ms")

    @property
    def latency(self) -> list[list[float]]:
        n = self.n_regions
        return self.latency_ms or [[0.0] * n for _ in range(n)]

    @property
    def n_regions(self) -> int:
        return len(self.worker_speeds)

    @property
    def n_workers(self) -> int:
        return sum(len(s) for s in self.worker_speeds)

    @property
    def relative_speeds(self) -> list[float]:
        """Every worker's speed over the fastest worker's, in worker order (region by region)."""
        flat = [s for region in self.worker_speeds for s in region]
        return [s / max(flat) for s in flat]

    @property
    def worker_regions(self) -> list[int]:
        return [r for r, region in enumerate(self.worker_speeds) for _ in region]


def load_regions(path: str | Path) -> Regions:
    """Read and validate a regions YAML (strict keys); errors name the file and the fix."""
    if not Path(path).is_file():
        raise ConfigError(
            f"dist.regions={str(path)!r} is not a file; pass --dist.regions=configs/dist/two_regions.yaml "
            "or another regions YAML (bandwidth_gbps, latency_ms, worker_speeds)"
        )
    regions = load_config(Regions, path)
    object.__setattr__(regions, "_source", str(path))
    return regions


@dataclass
class Layout:
    """Rank -> role under torchrun. HALoS: rank 0 the global server (region 0), then per region its local server
    followed by its workers. DiLoCo and Async Local-SGD: rank 0 the one server (region 0), then the workers."""

    algo: str
    regions: Regions

    @property
    def hierarchical(self) -> bool:
        return self.algo == "halos"

    @property
    def world_size(self) -> int:
        return 1 + self.regions.n_workers + (self.regions.n_regions if self.hierarchical else 0)

    def local_server(self, region: int) -> int:
        """Rank of ``region``'s local server (HALoS) or of the one server."""
        if not self.hierarchical:
            return 0
        return 1 + region + sum(len(s) for s in self.regions.worker_speeds[:region])

    def worker_rank(self, worker: int) -> int:
        if not self.hierarchical:
            return 1 + worker
        region = self.regions.worker_regions[worker]
        return self.local_server(region) + 1 + worker - sum(len(s) for s in self.regions.worker_speeds[:region])

    def role(self, rank: int) -> tuple[str, int]:
        """('global' | 'local' | 'server' | 'worker', index) of ``rank``."""
        if rank == 0:
            return ("global", 0) if self.hierarchical else ("server", 0)
        for w in range(self.regions.n_workers):
            if self.worker_rank(w) == rank:
                return "worker", w
        for r in range(self.regions.n_regions):
            if self.hierarchical and self.local_server(r) == rank:
                return "local", r
        raise ValueError(f"rank {rank} is outside the layout of {self.world_size} processes")

    def region_of(self, rank: int) -> int:
        kind, i = self.role(rank)
        if kind == "worker":
            return self.regions.worker_regions[i]
        return i if kind == "local" else 0

    def check_world(self, world_size: int) -> None:
        if world_size != self.world_size:
            r, w = self.regions.n_regions, self.regions.n_workers
            need = f"1 server + {w} workers"
            if self.hierarchical:
                need = f"1 global server + {r} local servers + {w} workers"
            source = getattr(self.regions, "_source", "this regions file")
            raise ConfigError(
                f"dist.algo={self.algo} with {source} needs {self.world_size} processes ({need}), "
                f"got {world_size}; run torchrun --nproc-per-node={self.world_size}, or --dist.simulate=true"
            )
