"""Moving messages between roles: the link model, and point-to-point torch.distributed (gloo or NCCL).

The link model turns a send at time t into an arrival at ``t + latency + 8 * bytes / bandwidth`` of the two
regions' link, never before an earlier message on the same directed link (FIFO, as TCP delivers). The same
:class:`LinkModel` serves the simulator's virtual clock and the real transport, which holds each outgoing
message until its arrival time and only then hands it to ``dist.send``: one machine reproduces a
geo-distributed run. Contention between messages is not modelled (nor is it in the authors' simulator).

:class:`TorchTransport` runs one role in one process: a thread per peer blocks in ``dist.recv`` (so a peer
whose process dies fails only its own thread, reported to the role as ``LOST``), a sender thread sends each
message at its due time, and :func:`serve` feeds the received messages to the role in arrival order.
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from genai_train.dist.algorithms import transfer_seconds
from genai_train.dist.config import Layout
from genai_train.dist.roles import Kind, Msg, Worker

__all__ = ["LinkModel", "TorchTransport", "serve", "CONTROL_BYTES"]

CONTROL_BYTES = 64  # a message without parameters (header only)
_HEADER = 6  # kind, steps, progress, loss, has payload, spare: float64


class LinkModel:
    """Arrival times of messages between ranks of a :class:`Layout` (``scale``: factor on every bandwidth,
    ``latency_scale``: factor on every latency)."""

    def __init__(self, layout: Layout, scale: float = 1.0, latency_scale: float = 1.0):
        self.layout, self.scale, self.latency_scale = layout, scale, latency_scale
        self.last: dict[tuple[int, int], float] = {}  # directed link -> arrival of its latest message

    def seconds(self, src: int, dst: int, nbytes: int) -> float:
        a, b = self.layout.region_of(src), self.layout.region_of(dst)
        regions = self.layout.regions
        bw = regions.bandwidth_gbps[a][b] * self.scale
        return transfer_seconds(nbytes, bw, regions.latency[a][b] * self.latency_scale)

    def arrival(self, src: int, dst: int, sent: float, nbytes: int) -> float:
        t = max(sent + self.seconds(src, dst, nbytes), self.last.get((src, dst), 0.0))
        self.last[(src, dst)] = t
        return t

    def state_dict(self) -> dict:
        return {"last": [[s, d, t] for (s, d), t in sorted(self.last.items())]}

    def load_state_dict(self, state: dict) -> None:
        self.last = {(int(s), int(d)): float(t) for s, d, t in state["last"]}


def message_bytes(msg: Msg) -> int:
    return CONTROL_BYTES + (msg.payload.numel() * msg.payload.element_size() if msg.payload is not None else 0)


class TorchTransport:
    """Point-to-point messages of one rank with its ``peers`` over the default process group, delayed by
    ``links`` (None: no delay). ``n`` is the length of the flat parameter vector every payload has."""

    def __init__(self, rank: int, peers: list[int], n: int, links: LinkModel | None, device: torch.device):
        self.rank, self.n, self.links, self.device = rank, n, links, device
        self.inbox: queue.Queue = queue.Queue()
        self.outbox: list = []  # heap of (due wall time, seq, dst, msg)
        self.cv = threading.Condition()
        self.seq, self.sending, self.closed = 0, 0, False
        self.dead: set[int] = set()
        self.peers = list(peers)
        self.t0 = time.monotonic()
        self.receivers = [threading.Thread(target=self._receive, args=(p,), daemon=True) for p in peers]
        for t in self.receivers:
            t.start()
        threading.Thread(target=self._send_loop, daemon=True).start()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- receiving: one blocking thread per peer ---------------------------------------------------------
    def _receive(self, peer: int) -> None:
        while True:
            header = torch.empty(_HEADER, dtype=torch.float64, device=self.device)
            try:
                dist.recv(header, src=peer)
                payload = None
                if header[4].item() > 0:
                    payload = torch.empty(self.n, dtype=torch.float32, device=self.device)
                    dist.recv(payload, src=peer)
            except RuntimeError:  # the peer's process is gone (gloo: "Connection closed by peer")
                self.dead.add(peer)
                self.inbox.put((peer, Msg(Kind.LOST)))
                return
            h = header.tolist()
            if int(h[0]) == Kind.CLOSE:
                return
            msg = Msg(Kind(int(h[0])), payload.cpu() if payload is not None else None, int(h[1]), h[2], h[3])
            self.inbox.put((peer, msg))

    def recv(self, timeout: float | None = None) -> tuple[int, Msg] | None:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    # -- sending: held until the link model's arrival time ------------------------------------------------
    def send(self, dst: int, msg: Msg) -> None:
        sent = self.now()
        due = self.links.arrival(self.rank, dst, sent, message_bytes(msg)) if self.links is not None else sent
        with self.cv:
            heapq.heappush(self.outbox, (due, self.seq, dst, msg))
            self.seq += 1
            self.cv.notify()

    def _send_loop(self) -> None:
        while True:
            with self.cv:
                while not self.outbox or self.outbox[0][0] > self.now():
                    if self.closed and not self.outbox:
                        return
                    self.cv.wait(timeout=None if not self.outbox else max(0.0, self.outbox[0][0] - self.now()))
                _, _, dst, msg = heapq.heappop(self.outbox)
                self.sending += 1
            try:
                if dst not in self.dead:
                    self._send_now(dst, msg)
            except RuntimeError:
                self.dead.add(dst)
            finally:
                with self.cv:
                    self.sending -= 1
                    self.cv.notify_all()

    def _send_now(self, dst: int, msg: Msg) -> None:
        has = msg.payload is not None
        header = torch.tensor([int(msg.kind), msg.steps, msg.progress, msg.loss, float(has), 0.0], dtype=torch.float64)
        dist.send(header.to(self.device), dst=dst)
        if has:
            dist.send(msg.payload.to(self.device, torch.float32).contiguous(), dst=dst)

    def close(self) -> None:
        """Send every queued message, then CLOSE to each peer (the last message on each link), and wait until
        every peer has sent its CLOSE or died: no receive is left pending when the process group goes away."""
        for p in self.peers:
            self.send(p, Msg(Kind.CLOSE))
        with self.cv:
            self.closed = True
            self.cv.notify_all()
            while self.outbox or self.sending:
                self.cv.wait(timeout=0.05)
        for t in self.receivers:
            t.join()


def serve(
    role,
    transport: TorchTransport,
    slowdown: float = 1.0,
    on_idle: Callable[[float], None] | None = None,
    poll_s: float = 0.05,
) -> float:
    """Feed ``role`` its messages until it is done. A worker's compute is stretched to ``slowdown`` times its
    measured duration by sleeping (a worker of speed s on a machine of speed 1: slowdown = 1 / s).
    ``on_idle(now)`` is called at least every ``poll_s`` seconds (the global server snapshots its model).
    Returns the seconds spent handling messages (for a worker: its compute, without the sleeps)."""
    if isinstance(role, Worker):
        for dst, msg in role.start():
            transport.send(dst, msg)
    busy = 0.0
    while not role.done:
        got = transport.recv(timeout=poll_s)
        if on_idle is not None:
            on_idle(transport.now())
        if got is None:
            continue
        src, msg = got
        t0 = time.perf_counter()
        out = role.handle(src, msg)
        spent = time.perf_counter() - t0
        busy += spent
        if isinstance(role, Worker) and msg.kind == Kind.MODEL and slowdown > 1.0:
            time.sleep((slowdown - 1.0) * spent)
        for dst, m in out:
            transport.send(dst, m)
    transport.close()
    return busy
