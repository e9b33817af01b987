"""A discrete-event simulator: the roles of :mod:`genai_train.dist.roles`, unchanged, on a virtual clock.

Every message is an event at its arrival time (:class:`~genai_train.dist.transport.LinkModel`); events are
handled in time order (ties in send order). A worker's handling of a model runs its real local steps here and
now, but its reply leaves at ``t + steps * step_s[worker]`` (compute time measured on this machine or given,
divided by the worker's speed). Servers' own compute is not timed (microseconds next to a link transfer).
So 16 workers in 4 regions run one after another on one core and the clock says what 16 machines would see.

Faults: :meth:`Simulator.kill` drops a worker at a virtual time (its server gets ``LOST``; a message it would
have sent after dying never arrives) and :meth:`Simulator.revive` brings it back (it sends ``JOIN``).
The whole simulation (roles, queue, clock, links) is one stateful object, so a checkpoint resumes it exactly.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import torch

from genai_train.dist.roles import Kind, Msg, Worker
from genai_train.dist.transport import LinkModel, message_bytes

__all__ = ["Simulator"]

_KILL, _REVIVE = -1, -2  # pseudo-kinds of fault events


class Simulator:
    """``roles``: rank -> role; ``step_s``: worker rank -> seconds per local step; ``root``: the rank whose model
    is the run's model (the global server or the one server); ``on_mark(t, root_role)`` is called at every
    multiple of ``mark_every_s`` virtual seconds (0: never) before the clock passes it, and once at the end."""

    def __init__(
        self,
        roles: dict[int, object],
        links: LinkModel,
        step_s: dict[int, float],
        root: int = 0,
        mark_every_s: float = 0.0,
        on_mark: Callable[[float, object], None] | None = None,
    ):
        self.roles, self.links, self.step_s, self.root = roles, links, step_s, root
        self.mark_every_s, self.on_mark = mark_every_s, on_mark
        self.t, self.seq, self.next_mark = 0.0, 0, mark_every_s
        self.queue: list[tuple] = []  # (time, seq, dst, src, incarnation of src, msg or fault)
        self.incarnation: dict[int, int] = {r: 0 for r in roles}
        self.dead: set[int] = set()
        self.started = False
        self.events = 0

    # -- scheduling ------------------------------------------------------------------------------------------
    def _push(self, at: float, dst: int, src: int, msg: Msg | int) -> None:
        heapq.heappush(self.queue, (at, self.seq, dst, src, self.incarnation.get(src, 0), msg))
        self.seq += 1

    def _send(self, src: int, out: list[tuple[int, Msg]], at: float) -> None:
        for dst, msg in out:
            self._push(self.links.arrival(src, dst, at, message_bytes(msg)), dst, src, msg)

    def start(self) -> None:
        if not self.started:
            self.started = True
            for rank, role in sorted(self.roles.items()):
                if isinstance(role, Worker):
                    self._send(rank, role.start(), 0.0)

    def kill(self, worker: int, at: float) -> None:
        self._push(at, worker, worker, _KILL)

    def revive(self, worker: int, at: float) -> None:
        self._push(at, worker, worker, _REVIVE)

    # -- running ---------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.roles[self.root].done or not self.queue

    def step(self) -> None:
        """Handle the next event."""
        at, _, dst, src, inc, msg = heapq.heappop(self.queue)
        self._marks_until(at)
        self.t = at
        self.events += 1
        if isinstance(msg, int):
            return self._fault(dst, msg)
        if inc != self.incarnation.get(src, 0) or dst in self.dead:
            return  # sent by an earlier life of a worker that died before it finished, or to a dead one
        role = self.roles[dst]
        out = role.handle(src, msg)
        delay = 0.0
        if isinstance(role, Worker) and msg.kind == Kind.MODEL:
            delay = role.local_steps * self.step_s[dst]
        self._send(dst, out, at + delay)

    def _fault(self, worker: int, what: int) -> None:
        role = self.roles[worker]
        if what == _KILL and worker not in self.dead:
            self.dead.add(worker)
            self.incarnation[worker] += 1  # what it was computing is lost with it
            self._push(self.t, role.server, worker, Msg(Kind.LOST))
        elif what == _REVIVE and worker in self.dead:
            self.dead.discard(worker)
            role.done = False
            self._send(worker, role.start(), self.t)

    def _marks_until(self, t: float) -> None:
        while self.mark_every_s > 0 and self.next_mark <= t:
            if self.on_mark is not None:
                self.on_mark(self.next_mark, self.roles[self.root])
            self.next_mark += self.mark_every_s

    def run(
        self,
        max_events: int | None = None,
        on_event: Callable[[Simulator], None] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> float:
        """Run until the root server is done (or ``max_events`` more events, or ``until()`` says so, asked before each
        event); returns the virtual time."""
        self.start()
        n = 0
        while not self.done and (max_events is None or n < max_events) and (until is None or not until()):
            self.step()
            n += 1
            if on_event is not None:
                on_event(self)
        return self.t

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        def pack(m: Msg | int):
            if isinstance(m, int):
                return {"fault": m}
            return {"kind": int(m.kind), "payload": m.payload, "steps": m.steps, "progress": m.progress, "loss": m.loss}

        return {
            "roles": {str(r): role.state_dict() for r, role in self.roles.items()},
            "queue": [[at, seq, dst, src, inc, pack(m)] for at, seq, dst, src, inc, m in self.queue],
            "clock": [self.t, self.seq, self.next_mark, self.events],
            "incarnation": [[r, i] for r, i in sorted(self.incarnation.items())],
            "dead": sorted(self.dead),
            "started": self.started,
            "links": self.links.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        for r, role in self.roles.items():
            role.load_state_dict(state["roles"][str(r)])

        def unpack(d: dict) -> Msg | int:
            if "fault" in d:
                return int(d["fault"])
            return Msg(Kind(int(d["kind"])), d["payload"], int(d["steps"]), float(d["progress"]), float(d["loss"]))

        self.queue = [(float(e[0]), int(e[1]), int(e[2]), int(e[3]), int(e[4]), unpack(e[5])) for e in state["queue"]]
        heapq.heapify(self.queue)
        self.t, self.seq, self.next_mark, self.events = state["clock"]
        self.seq, self.events = int(self.seq), int(self.events)
        self.incarnation = {int(r): int(i) for r, i in state["incarnation"]}
        self.dead = set(state["dead"])
        self.started = bool(state["started"])
        self.links.load_state_dict(state["links"])
        torch.set_rng_state(state["torch_rng"])
