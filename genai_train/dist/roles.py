"""The roles of HALoS and its baselines as message-driven state machines, run unchanged by the torch.distributed
transport (one process per role under torchrun) and by the discrete-event simulator (all roles in one process).

A role never touches a clock or a socket: ``handle(src, msg)`` returns the messages to send as ``(dst, Msg)``
pairs, and the runner delivers them (after the link model's delay). Pseudocode: halos.md section 1.

    worker i:            JOIN -> MODEL(theta) -> H_i local steps -> PGRAD(theta_start - theta_end) -> MODEL ...
    local server r:      PGRAD g: theta_r <- DN_l(theta_r, g); every K: PUSH(snapshot - theta_r) without waiting;
                         reply MODEL(theta_r) at once.  GLOBAL theta_g: theta_r <- (1-a) theta_r + a theta_g
    global server:       PUSH u from r: theta_g <- DN_g(theta_g, u); GLOBAL(theta_g) to r only
    sync server (DiLoCo): waits for every live worker's PGRAD, Nesterov step on the mean, MODEL to all

No barrier anywhere but in DiLoCo. A worker whose process dies is reported as LOST and dropped by its server;
a worker may (re)join at any time with JOIN. Stopping: the server that counts the budget (global, or the one
server) answers STOP; local servers forward it to their workers and say BYE once every worker has stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import torch

from genai_train.dist.algorithms import DNState, delayed_nesterov, merge, nesterov_outer_step

__all__ = ["Kind", "Msg", "LocalTrainer", "Worker", "LocalServer", "GlobalServer", "SyncServer"]


class Kind(IntEnum):
    JOIN = 1  # worker -> server: send me the model
    MODEL = 2  # server -> worker: theta and the global progress (local steps) for the LR schedule
    PGRAD = 3  # worker -> server: pseudo-gradient theta_start - theta_end after `steps` local steps
    PUSH = 4  # local -> global: accumulated change snapshot - theta_r, covering `steps` worker steps
    GLOBAL = 5  # global -> local: theta_g, with the worker steps integrated so far as `progress`
    STOP = 6  # budget reached
    BYE = 7  # local -> global: all my workers stopped; nothing more comes from me
    LOST = 8  # the transport: this peer's process is gone
    CLOSE = 9  # the transport: this peer's role is done and it sends nothing more (never reaches a role)
    STATE = 10  # local -> global before BYE: part `steps` of the region's state, for the run's checkpoint


@dataclass
class Msg:
    kind: Kind
    payload: torch.Tensor | None = None  # [n] flat fp32 parameters or their change
    steps: int = 0
    progress: float = 0.0
    loss: float = float("nan")


Out = list[tuple[int, Msg]]


class LocalTrainer(Protocol):
    """A worker's own training: the task's model, optimizer and data (``genai_train.dist.task.TaskTrainer``)."""

    def get_flat(self) -> torch.Tensor: ...
    def set_flat(self, theta: torch.Tensor) -> None: ...
    def step(self, position: float) -> float: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Worker:
    """Runs ``local_steps`` steps of its own optimizer from each model it receives; sends the pseudo-gradient.

    ``n_workers`` turns the global progress (local steps of all workers) into the LR schedule's position in
    global batches: position = progress / n_workers + h at local step h (halos.md: sample count / global batch).
    """

    def __init__(self, trainer: LocalTrainer, server: int, local_steps: int, n_workers: int):
        self.trainer, self.server, self.local_steps, self.n_workers = trainer, server, local_steps, n_workers
        self.steps_done, self.done, self.last_loss = 0, False, float("nan")

    def start(self) -> Out:
        return [(self.server, Msg(Kind.JOIN))]

    def handle(self, src: int, msg: Msg) -> Out:
        if msg.kind == Kind.STOP or (msg.kind == Kind.LOST and src == self.server):
            self.done = True
            return []
        if msg.kind != Kind.MODEL:
            return []
        theta0 = msg.payload.clone()  # [n]
        self.trainer.set_flat(theta0)
        losses = [self.trainer.step(msg.progress / self.n_workers + h) for h in range(self.local_steps)]
        self.steps_done += self.local_steps
        self.last_loss = sum(losses) / len(losses)
        g = theta0 - self.trainer.get_flat()  # pseudo-gradient: start - end
        return [(self.server, Msg(Kind.PGRAD, g, steps=self.local_steps, loss=self.last_loss))]

    def state_dict(self) -> dict:
        return {"trainer": self.trainer.state_dict(), "steps_done": self.steps_done, "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.steps_done, self.done = int(state["steps_done"]), bool(state["done"])


class _Server:
    """What every server shares: its model, its live workers, the stop hand-shake."""

    def __init__(self, theta: torch.Tensor, workers: list[int]):
        self.theta = theta.detach().clone()  # [n]
        self.workers = list(workers)
        self.alive: set[int] = set(workers)
        self.stopping, self.done = False, False
        self.stopped: set[int] = set()

    def restart(self) -> None:
        """Continue a stopped run (a resumed real run with a larger budget): every worker is expected again."""
        self.stopping, self.done = False, False
        self.stopped.clear()
        self.alive = set(self.workers)

    def _reply(self, worker: int, progress: float) -> Msg:
        if self.stopping:
            self.stopped.add(worker)
            return Msg(Kind.STOP)
        return Msg(Kind.MODEL, self.theta.clone(), progress=progress)

    def _all_stopped(self) -> bool:
        return self.stopping and self.alive <= self.stopped

    def _base_state(self) -> dict:
        return {
            "theta": self.theta.clone(),
            "alive": sorted(self.alive),
            "stopping": self.stopping,
            "done": self.done,
            "stopped": sorted(self.stopped),
        }

    def _load_base(self, state: dict) -> None:
        self.theta.copy_(state["theta"])
        self.alive, self.stopped = set(state["alive"]), set(state["stopped"])
        self.stopping, self.done = bool(state["stopping"]), bool(state["done"])


class LocalServer(_Server):
    """HALoS's local parameter server of one region; with ``parent=None`` it is Async Local-SGD's one server.

    ``budget`` (worker steps) only matters without a parent: the one server then stops the run itself.
    ``progress_scale``: the global progress is estimated as the global server's count at the last merge plus
    ``progress_scale`` (the number of regions) times this region's steps since then.
    """

    def __init__(
        self,
        theta: torch.Tensor,
        workers: list[int],
        eta: float,
        beta: float,
        N: int,
        parent: int | None = None,
        push_every: int = 0,
        alpha: float = 1.0,
        progress_scale: float = 1.0,
        budget: int = 0,
    ):
        super().__init__(theta, workers)
        self.eta, self.beta, self.N = eta, beta, N
        self.parent, self.push_every, self.alpha, self.progress_scale = parent, push_every, alpha, progress_scale
        self.budget = budget
        self.dn = DNState.zeros_like(self.theta)
        self.snapshot = self.theta.clone()  # theta_hat: the model at the last merge
        self.v = self.v_hat = 0  # updates applied; value of v at the last merge
        self.known_global = 0.0  # worker steps the global server had integrated at the last merge
        self.since_merge = self.since_push = self.applied_steps = 0

    @property
    def progress(self) -> float:
        return self.known_global + self.progress_scale * self.since_merge

    @property
    def integrated(self) -> int:
        """Worker steps this server has applied (the budget's count when it is the one server)."""
        return self.applied_steps

    def handle(self, src: int, msg: Msg) -> Out:
        k = msg.kind
        if k == Kind.JOIN:
            self.alive.add(src)
            self.stopped.discard(src)
            return [(src, self._reply(src, self.progress))]
        if k == Kind.PGRAD:
            return self._on_pseudo_gradient(src, msg)
        if k == Kind.GLOBAL:  # theta_r <- (1 - alpha) theta_r + alpha theta_g; re-snapshot (halos.md, merge_model)
            merge(self.theta, msg.payload, self.alpha)
            self.snapshot.copy_(self.theta)
            self.v_hat, self.known_global, self.since_merge = self.v, msg.progress, 0
            return []
        if k == Kind.STOP and src == self.parent:
            self.stopping = True
            return self._finish_if_stopped()
        if k == Kind.LOST:
            self.alive.discard(src)
            return self._finish_if_stopped()
        return []

    def _on_pseudo_gradient(self, src: int, msg: Msg) -> Out:
        self.alive.add(src)  # a worker dropped by mistake (or one that rejoined) is back
        delayed_nesterov(self.theta, msg.payload, self.dn, self.eta, self.beta, self.N)
        self.v += 1
        self.since_merge += msg.steps
        self.since_push += msg.steps
        self.applied_steps += msg.steps
        out: Out = []
        if self.parent is not None and self.v == self.v_hat + self.push_every and not self.stopping:
            # non-blocking push of the change since the last merge; re-armed only by the next merge
            out.append((self.parent, Msg(Kind.PUSH, self.snapshot - self.theta, steps=self.since_push)))
            self.since_push = 0
        if self.parent is None and self.budget and self.applied_steps >= self.budget:
            self.stopping = True
        out.append((src, self._reply(src, self.progress)))
        return out + self._finish_if_stopped()

    def _finish_if_stopped(self) -> Out:
        if self.done or not self._all_stopped():
            return []
        self.done = True
        if self.parent is None:
            return []
        parts = [(self.parent, Msg(Kind.STATE, p, steps=i)) for i, p in enumerate(self.state_parts())]
        return [*parts, (self.parent, Msg(Kind.BYE))]

    def state_parts(self) -> list[torch.Tensor]:
        """The server state as flat [n] tensors (model, snapshot, momentum, accumulator, counters) that travel as
        messages to the global server, which checkpoints every region (rank 0 writes)."""
        counters = torch.zeros_like(self.theta)
        values = [self.v, self.v_hat, self.since_merge, self.since_push, self.applied_steps, self.dn.t]
        counters[: len(values) + 1] = torch.tensor([*values, self.known_global], dtype=torch.float64).to(counters)
        return [self.theta.clone(), self.snapshot.clone(), self.dn.m.clone(), self.dn.delta.clone(), counters]

    def load_parts(self, parts: list[torch.Tensor]) -> None:
        """Take :meth:`state_parts` back (a resumed real run); the live-worker set starts full again."""
        for dst, src in zip((self.theta, self.snapshot, self.dn.m, self.dn.delta), parts):
            dst.copy_(src)
        c = [int(x) for x in parts[4][:6].tolist()]
        self.v, self.v_hat, self.since_merge, self.since_push, self.applied_steps, self.dn.t = c
        self.known_global = float(parts[4][6])
        # a push in flight when the run stopped was never answered: re-arm the trigger (the snapshot stays, so
        # the next push still carries every change since the last merge)
        self.v_hat = self.v

    def state_dict(self) -> dict:
        return {
            **self._base_state(),
            "dn": self.dn.state_dict(),
            "snapshot": self.snapshot.clone(),
            "counters": [self.v, self.v_hat, self.since_merge, self.since_push, self.applied_steps],
            "known_global": self.known_global,
        }

    def load_state_dict(self, state: dict) -> None:
        self._load_base(state)
        self.dn.load_state_dict(state["dn"])
        self.snapshot.copy_(state["snapshot"])
        self.v, self.v_hat, self.since_merge, self.since_push, self.applied_steps = (int(c) for c in state["counters"])
        self.known_global = float(state["known_global"])


class GlobalServer(_Server):
    """HALoS's global parameter server: applies each region's push with its own DN, answers that region only;
    stops the run once the pushes cover ``budget`` worker steps."""

    def __init__(self, theta: torch.Tensor, locals_: list[int], eta: float, beta: float, N: int, budget: int):
        super().__init__(theta, locals_)
        self.eta, self.beta, self.N, self.budget = eta, beta, N, budget
        self.dn = DNState.zeros_like(self.theta)
        self.integrated = 0  # worker steps covered by the pushes applied
        self.updates = 0
        self.regions: dict[int, dict[int, torch.Tensor]] = {}  # local server -> its state parts (at the end)

    def handle(self, src: int, msg: Msg) -> Out:
        if msg.kind == Kind.PUSH and not self.stopping:
            delayed_nesterov(self.theta, msg.payload, self.dn, self.eta, self.beta, self.N)
            self.integrated += msg.steps
            self.updates += 1
            if self.integrated >= self.budget:
                self.stopping = True
                return [(r, Msg(Kind.STOP)) for r in sorted(self.alive)]
            return [(src, Msg(Kind.GLOBAL, self.theta.clone(), progress=float(self.integrated)))]
        if msg.kind == Kind.STATE:
            self.regions.setdefault(src, {})[msg.steps] = msg.payload
        if msg.kind in (Kind.BYE, Kind.LOST):
            (self.stopped.add if msg.kind == Kind.BYE else self.alive.discard)(src)
            self.done = self._all_stopped()
        return []

    def state_dict(self) -> dict:
        regions = {str(r): [parts[i] for i in sorted(parts)] for r, parts in self.regions.items()}
        counters = [self.integrated, self.updates]
        return {**self._base_state(), "dn": self.dn.state_dict(), "counters": counters, "regions": regions}

    def load_state_dict(self, state: dict) -> None:
        self._load_base(state)
        self.dn.load_state_dict(state["dn"])
        self.integrated, self.updates = (int(c) for c in state["counters"])
        self.regions = {int(r): dict(enumerate(parts)) for r, parts in state.get("regions", {}).items()}


class SyncServer(_Server):
    """DiLoCo: one synchronous round = every live worker's pseudo-gradient, averaged, one outer Nesterov step."""

    def __init__(self, theta: torch.Tensor, workers: list[int], lr: float, mu: float, budget: int):
        super().__init__(theta, workers)
        self.lr, self.mu, self.budget = lr, mu, budget
        self.m = torch.zeros_like(self.theta)
        self.sum = torch.zeros_like(self.theta)
        self.pending: dict[int, int] = {}  # worker -> steps in this round
        self.integrated = self.rounds = 0
        self.waiting: set[int] = set()  # joined, waiting for the next round's model

    def handle(self, src: int, msg: Msg) -> Out:
        if msg.kind == Kind.JOIN:
            self.alive.add(src)
            if self.rounds == 0 and not self.pending:
                return [(src, self._reply(src, float(self.integrated)))]
            self.waiting.add(src)  # joins at the next round
            return self._maybe_step()
        if msg.kind == Kind.PGRAD:
            self.sum.add_(msg.payload)
            self.pending[src] = msg.steps
            return self._maybe_step()
        if msg.kind == Kind.LOST:
            self.alive.discard(src)
            self.waiting.discard(src)
            return self._maybe_step()
        return []

    def _maybe_step(self) -> Out:
        active = self.alive - self.waiting
        if not self.pending or not active <= set(self.pending):
            return []
        nesterov_outer_step(self.theta, self.sum / len(self.pending), self.m, self.lr, self.mu)
        self.integrated += sum(self.pending.values())
        self.rounds += 1
        self.sum.zero_()
        self.pending.clear()
        self.waiting.clear()
        self.stopping = self.integrated >= self.budget
        out = [(w, self._reply(w, float(self.integrated))) for w in sorted(self.alive)]
        self.done = self._all_stopped()
        return out

    def state_dict(self) -> dict:
        return {
            **self._base_state(),
            "m": self.m.clone(),
            "sum": self.sum.clone(),
            "pending": dict(self.pending),
            "waiting": sorted(self.waiting),
            "counters": [self.integrated, self.rounds],
        }

    def load_state_dict(self, state: dict) -> None:
        self._load_base(state)
        self.m.copy_(state["m"])
        self.sum.copy_(state["sum"])
        self.pending = {int(k): int(v) for k, v in state["pending"].items()}
        self.waiting = set(state["waiting"])
        self.integrated, self.rounds = (int(c) for c in state["counters"])
