"""Wiring: a task's model and data -> the roles of ``dist.algo`` -> the simulator or torch.distributed, inside
the run lifecycle (validate, then write; rank 0 writes; checkpoints; metrics).

Rank -> role under torchrun: :class:`~genai_train.dist.config.Layout`. The budget is ``train.steps`` global
batches, i.e. ``train.steps * n_workers`` worker steps, so every algorithm sees the tokens DDP would. The
run's model (whose validation loss is logged against time) is the global server's, or the one server's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genai_train.config import ConfigError
from genai_train.dist.algorithms import bandwidth_scale, scaled_local_steps
from genai_train.dist.config import DistConfig, Layout, Regions, load_regions
from genai_train.dist.roles import GlobalServer, LocalServer, SyncServer, Worker
from genai_train.dist.sim import Simulator
from genai_train.dist.task import TaskTrainer, flat_params, load_flat
from genai_train.dist.transport import LinkModel, TorchTransport, serve
from genai_train.run import Run, Value
from genai_train.seed import rng_state

__all__ = ["DistTask", "build_role", "link_model", "measure_step_s", "train_distributed", "check_dist_world"]


@dataclass
class DistTask:
    """What a task hands the distributed runner."""

    make_model: Callable[[], nn.Module]  # the same initial model on every call
    make_trainer: Callable[[int, int], TaskTrainer]  # (worker index, number of workers) -> its trainer
    evaluate: Callable[[nn.Module], float]  # validation loss of a model


def build_role(rank: int, layout: Layout, cfg: DistConfig, theta0: torch.Tensor, task: DistTask, budget: int):
    """The role of ``rank`` (its initial model ``theta0`` [n]); ``budget`` is in worker steps."""
    kind, i = layout.role(rank)
    regions = layout.regions
    W = regions.n_workers
    if kind == "worker":
        speed = regions.relative_speeds[i]
        server = layout.local_server(regions.worker_regions[i])
        H = scaled_local_steps(cfg.local_steps, speed, cfg.rescale_local_steps)
        return Worker(task.make_trainer(i, W), server, H, W)
    if kind == "global":
        h = cfg.halos
        locals_ = [layout.local_server(r) for r in range(regions.n_regions)]
        return GlobalServer(theta0, locals_, h.global_lr, h.global_momentum, h.global_delay, budget)
    workers = [layout.worker_rank(w) for w in range(W) if kind == "server" or regions.worker_regions[w] == i]
    if kind == "local":
        h = cfg.halos
        return LocalServer(
            theta0, workers, h.local_lr, h.local_momentum, h.local_delay, parent=0, push_every=h.push_every,
            alpha=h.merge_alpha, progress_scale=regions.n_regions,
        )  # fmt: skip
    if cfg.algo == "diloco":
        d = cfg.diloco
        return SyncServer(theta0, workers, d.outer_lr, d.outer_momentum, budget)
    a = cfg.async_local_sgd
    return LocalServer(theta0, workers, a.lr, a.momentum, a.delay, budget=budget)


def link_model(layout: Layout, model_bytes: int, step_s: float) -> LinkModel:
    """The link model of a regions file, its bandwidths rescaled to the reference model and step if it names one."""
    r = layout.regions
    if not r.reference.model_mb:
        return LinkModel(layout)
    ref_step = r.reference.step_ms / 1e3
    scale = bandwidth_scale(model_bytes, step_s, r.reference.model_mb * 1e6, ref_step)
    return LinkModel(layout, scale=scale, latency_scale=step_s / ref_step)


def measure_step_s(task: DistTask, steps: int = 6, warmup: int = 2) -> float:
    """Median seconds of one optimizer step of a throwaway worker on this machine."""
    rng = torch.get_rng_state()
    trainer = task.make_trainer(0, 1)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        trainer.step(0)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    torch.set_rng_state(rng)
    return sorted(times)[len(times) // 2]


def check_dist_world(cfg: DistConfig) -> Regions:
    """Refuse a world size that does not fit the regions file, before anything is written."""
    regions = load_regions(cfg.regions)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.simulate:
        if world > 1:
            raise ConfigError("dist.simulate=true runs every role in one process; start it without torchrun")
    else:
        Layout(cfg.algo, regions).check_world(world)
    return regions


def _model_of(task: DistTask, theta: torch.Tensor) -> nn.Module:
    model = task.make_model()
    load_flat(model, theta.to(next(model.parameters()).device))
    return model


def train_distributed(name: str, cfg: Any, task: DistTask, shape_keys=("model",)) -> dict:
    """Train ``cfg`` (a task config with ``dist``, ``train``, ``run``, ``ckpt``) with ``cfg.dist.algo``."""
    dcfg: DistConfig = cfg.dist
    regions = check_dist_world(dcfg)
    layout = Layout(dcfg.algo, regions)
    keys = (*shape_keys, "dist.algo", "dist.regions", "dist.simulate", "dist.halos", "dist.diloco")
    run = Run(name, cfg, shape_keys=(*keys, "dist.async_local_sgd", "data"))
    if dcfg.simulate:
        return _simulate(run, cfg, layout, task)
    return _real(run, cfg, layout, task)


def _simulate(run: Run, cfg: Any, layout: Layout, task: DistTask) -> dict:
    dcfg, W = cfg.dist, layout.regions.n_workers
    saved = run.checkpoint
    model0 = task.make_model()
    theta0 = flat_params(model0)
    if saved is not None:
        step_s = float(saved["meta"]["value"]["step_s"])
    else:
        step_s = dcfg.step_ms / 1e3 if dcfg.step_ms > 0 else measure_step_s(task)
    curve = Value([])

    def mark(t: float, root) -> None:
        loss = task.evaluate(_model_of(task, root.theta))
        curve.value.append([t, root.integrated / W, loss])
        run.log(max(1, root.integrated // W), val_loss=loss, time_s=t)

    step_of_worker = [step_s / v for v in layout.regions.relative_speeds]
    sim = build_simulator(layout, dcfg, task, theta0, cfg.train.steps * W, step_of_worker, dcfg.eval_every_s, mark)
    meta = Value({"step_s": step_s, "link_scale": sim.links.scale})
    step = run.restore(sim=sim, meta=meta, curve=curve)
    next_save = (step // cfg.ckpt.every + 1) * cfg.ckpt.every if cfg.ckpt.every > 0 else None

    def maybe_save(s: Simulator) -> None:
        nonlocal next_save
        g = s.roles[0].integrated // W
        if next_save is not None and g >= next_save and not s.done:
            run.save(g, sim=s, meta=meta, curve=curve)
            next_save = (g // cfg.ckpt.every + 1) * cfg.ckpt.every

    t_end = sim.run(on_event=maybe_save)
    root = sim.roles[0]
    val = _final_point(task, root.theta, t_end, root.integrated / W, curve.value)
    worker_steps = sum(r.steps_done for r in sim.roles.values() if isinstance(r, Worker))
    run.save(root.integrated // W, sim=sim, meta=meta, curve=curve)
    extra = {"worker_steps": worker_steps, "step_s": step_s}
    return _finish(run, dcfg.algo, True, t_end, val, root.integrated / W, sim.links, curve.value, **extra)


def _final_point(task: DistTask, theta, t_end: float, global_steps: float, curve: list) -> float:
    """The global model's validation loss at the end, appended to ``curve`` as its last point."""
    val = task.evaluate(_model_of(task, theta))
    curve.append([t_end, global_steps, val])
    return val


def build_simulator(
    layout: Layout,
    dcfg: DistConfig,
    task: DistTask,
    theta0: torch.Tensor,
    budget: int,
    step_of_worker: list[float],
    mark_every_s: float = 0.0,
    on_mark: Callable | None = None,
) -> Simulator:
    """Every role of ``dcfg.algo`` on the virtual clock: worker w takes ``step_of_worker[w]`` seconds per local step,
    links are scaled for the fastest of them, ``on_mark(t, root)`` every ``mark_every_s`` (0: never)."""
    links = link_model(layout, theta0.numel() * 4, min(step_of_worker))
    roles = {rank: build_role(rank, layout, dcfg, theta0, task, budget) for rank in range(layout.world_size)}
    step_of = {layout.worker_rank(w): t for w, t in enumerate(step_of_worker)}
    on_mark = on_mark if mark_every_s > 0 else None
    return Simulator(roles, links, step_of, root=0, mark_every_s=mark_every_s, on_mark=on_mark)


def _finish(
    run: Run, algo: str, simulated: bool, t_end: float, val: float, global_steps: float, links, curve: list, **extra
) -> dict:
    """The run's result (``result.json``, the last log line) and the run closed."""
    result = {
        "algo": algo,
        "simulated": simulated,
        "time_s": t_end,
        "val_loss": val,
        "global_steps": global_steps,
        **extra,
        "link_scale": links.scale,
        "curve": curve,
    }
    if run.is_main:
        run.log(max(1, int(result["global_steps"])), val_loss=result["val_loss"], time_s=result["time_s"])
        (run.dir / "result.json").write_text(json.dumps(result, indent=2))
        run.info(
            f"{result['algo']}: val loss {result['val_loss']:.4f} after {result['time_s']:.1f} "
            f"{'virtual' if result['simulated'] else 'wall-clock'} s; run dir {run.dir}"
        )
    run.close()
    return result


def _real(run: Run, cfg: Any, layout: Layout, task: DistTask) -> dict:
    import torch.distributed as dist

    dcfg, W, rank = cfg.dist, layout.regions.n_workers, run.dist.rank
    saved = run.checkpoint
    if saved is not None and "server" not in saved:
        raise ConfigError(f"{run.dir} holds a checkpoint of a simulated run; resume it with --dist.simulate=true")
    if saved is not None and int(saved["step"]) >= cfg.train.steps:
        raise ConfigError(
            f"{run.dir} finished at {saved['step']} of train.steps={cfg.train.steps}; raise --train.steps to go on"
        )
    run.restore()
    theta0 = flat_params(task.make_model())
    step_s = torch.tensor([dcfg.step_ms / 1e3], dtype=torch.float64)
    if layout.regions.reference.model_mb and dcfg.step_ms <= 0:
        if rank == 0:
            step_s[0] = measure_step_s(task)
        dist.broadcast(step_s, src=0)  # one link model on every rank
    links = link_model(layout, theta0.numel() * 4, float(step_s[0]))
    role = build_role(rank, layout, dcfg, theta0, task, cfg.train.steps * W)
    kind, i = layout.role(rank)
    if saved is not None:  # every server continues from its saved state; workers start from their server's model
        if kind == "local":
            role.load_parts(saved["server"]["regions"][str(rank)])
        elif kind != "worker":
            role.load_state_dict(saved["server"])
        if kind != "worker":
            role.restart()
    if kind == "worker":
        peers = [role.server]
    elif kind == "local":
        peers = [0, *role.workers]
    else:
        peers = list(role.workers)
    dist.barrier()  # every role is built: the clocks start together
    transport = TorchTransport(rank, peers, theta0.numel(), links, torch.device("cpu"))
    snaps: list[tuple[float, float, torch.Tensor]] = []
    next_snap = [0.0]

    def snapshot(now: float) -> None:
        if dcfg.eval_every_s > 0 and now >= next_snap[0]:
            snaps.append((now, role.integrated / W, role.theta.clone()))
            next_snap[0] += dcfg.eval_every_s

    slowdown = 1.0 / layout.regions.relative_speeds[i] if kind == "worker" and dcfg.emulate_speeds else 1.0
    busy = serve(role, transport, slowdown=slowdown, on_idle=snapshot if rank == 0 else None)
    if kind == "worker":  # what the simulator needs to replay this run: compute per step on this machine
        per_step = busy / max(1, role.steps_done)
        print(f"worker {i} (rank {rank}): {role.steps_done} local steps, {per_step:.6f} s compute per step", flush=True)
    if rank != 0:
        run.close()
        return {"rank": rank, "role": kind}
    t_end = transport.now()
    curve = [[t, g, task.evaluate(_model_of(task, th))] for t, g, th in snaps]  # evaluation is not training time
    val = _final_point(task, role.theta, t_end, role.integrated / W, curve)
    for t, g, loss in curve[:-1]:
        run.log(max(1, int(g)), val_loss=loss, time_s=t)
    # rank 0 alone writes here (the other ranks are gone): the checkpointer directly, no barrier. With HALoS the
    # global server's state holds every region's (sent as STATE messages before BYE).
    state = {"step": role.integrated // W, "rng": rng_state(), "config": run.config_dict}
    run.checkpointer.save(role.integrated // W, {**state, "server": role.state_dict(), "curve": {"value": curve}})
    return _finish(run, dcfg.algo, False, t_end, val, role.integrated / W, links, curve)
