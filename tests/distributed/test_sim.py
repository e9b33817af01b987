"""The roles on the simulator's virtual clock: equal to plain training in the degenerate case, DiLoCo's closed
form, faults, and exact resume of every server's (and worker's) state."""

from __future__ import annotations

import json
import shutil

import torch

from genai_train.dist.config import DiLoCoConfig, DistConfig, HalosConfig, Layout, load_regions
from genai_train.dist.roles import GlobalServer, Kind, LocalServer, Msg
from genai_train.dist.runner import build_simulator
from genai_train.dist.sim import Simulator
from genai_train.dist.task import flat_params
from genai_train.lm import build_trainer, dist_task, train

from .helpers import TWO_REGIONS, dist_cfg, regions_file


def _sim(cfg, step_s: float = 1.0) -> tuple[Simulator, Layout]:
    layout = Layout(cfg.dist.algo, load_regions(cfg.dist.regions))
    task = dist_task(cfg)
    theta0 = flat_params(task.make_model())
    step_of_worker = [step_s / v for v in layout.regions.relative_speeds]
    budget = cfg.train.steps * layout.regions.n_workers
    return build_simulator(layout, cfg.dist, task, theta0, budget, step_of_worker), layout


def test_one_worker_h1_k1_alpha1_without_momentum_equals_plain_training(tmp_path):
    torch.set_num_threads(1)
    one = regions_file(tmp_path / "one.yaml", [[1.0]], [[1000.0]])
    plain = HalosConfig(local_steps=1, push_every=1, merge_alpha=1.0, local_lr=1.0, local_momentum=0.0, local_delay=1)
    plain.global_lr, plain.global_momentum, plain.global_delay = 1.0, 0.0, 1
    cfg = dist_cfg(tmp_path / "h", DistConfig(algo="halos", regions=one, simulate=True, halos=plain), steps=6)
    sim, _ = _sim(cfg)
    models = []
    sim.run(on_event=lambda s: len(models) < s.roles[0].updates and models.append(s.roles[0].theta.clone()))

    ref_cfg = dist_cfg(tmp_path / "plain", DistConfig(), steps=6)
    ref_models = []
    trainer, _ = build_trainer(ref_cfg, callbacks=[lambda t, step: ref_models.append(flat_params(t.model))])
    trainer.fit()
    trainer.close()
    assert len(models) == len(ref_models) == 6
    for step, (a, b) in enumerate(zip(models, ref_models), 1):
        assert (a - b).abs().max() < 1e-5, f"step {step}: the global model differs from plain training"
    assert (models[-1] - models[0]).abs().max() > 1e-3  # it trained


def test_diloco_with_one_worker_equals_its_closed_form(tmp_path):
    torch.set_num_threads(1)
    one = regions_file(tmp_path / "one.yaml", [[1.0]], [[10.0]])
    dcfg = DistConfig(algo="diloco", regions=one, simulate=True, diloco=DiLoCoConfig(local_steps=3))
    cfg = dist_cfg(tmp_path / "d", dcfg, steps=9)
    sim, _ = _sim(cfg)
    sim.run()
    # closed form: the worker's own H steps from the server's model, then torch's Nesterov SGD on theta - theta_H
    task = dist_task(cfg)
    worker = task.make_trainer(0, 1)
    p = torch.nn.Parameter(flat_params(task.make_model()))
    outer = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True)
    for k in range(3):
        worker.set_flat(p.detach())
        for h in range(3):
            worker.step(3 * k + h)
        p.grad = p.detach() - worker.get_flat()
        outer.step()
    assert sim.roles[0].rounds == 3
    assert (sim.roles[0].theta - p.detach()).abs().max() < 1e-5  # fp32 rounding of the same sums


def test_killed_worker_is_dropped_keeps_applied_updates_and_can_rejoin(tmp_path):
    torch.set_num_threads(1)
    dcfg = DistConfig(algo="halos", regions=TWO_REGIONS, simulate=True, halos=HalosConfig(push_every=2))
    cfg = dist_cfg(tmp_path / "k", dcfg, steps=30)
    sim, layout = _sim(cfg, step_s=0.01)
    victim, lps = layout.worker_rank(1), layout.local_server(0)
    sim.kill(victim, at=0.2)
    sim.revive(victim, at=0.5)
    seen = {"theta": sim.roles[lps].theta.clone()}

    def watch(s: Simulator) -> None:
        if victim in s.dead and "dropped" not in seen:
            seen["dropped"] = s.t
        if victim in s.dead and victim not in s.roles[lps].alive and "lps" not in seen:
            seen["lps"] = s.roles[lps].applied_steps
            assert torch.equal(s.roles[lps].theta, seen["theta"]), "dropping a worker changed the region's model"
        seen["theta"] = s.roles[lps].theta.clone()
        if "lps" in seen and victim not in s.dead and victim in s.roles[lps].alive:
            seen.setdefault("rejoined_steps", s.roles[victim].steps_done)

    sim.run(on_event=watch)
    assert seen["dropped"] >= 0.2 and "lps" in seen, "the local server did not drop the dead worker"
    assert sim.roles[0].done and sim.roles[0].integrated >= 30 * 4 and sim.t > 0.5
    assert sim.roles[victim].steps_done > seen["rejoined_steps"], "the revived worker did not train again"
    assert sim.roles[lps].applied_steps >= seen["lps"]


def test_run_until_stops_after_the_first_event_where_it_holds_and_then_continues_as_one_run(tmp_path):
    torch.set_num_threads(1)
    dcfg = DistConfig(algo="halos", regions=TWO_REGIONS, simulate=True, halos=HalosConfig(push_every=2))
    cfg = dist_cfg(tmp_path / "u", dcfg, steps=12)
    torch.manual_seed(0)
    whole, _ = _sim(cfg, step_s=0.01)
    whole.run()
    torch.manual_seed(0)
    cut, _ = _sim(cfg, step_s=0.01)
    seen = []
    cut.run(on_event=lambda s: seen.append(s.roles[0].integrated), until=lambda: cut.roles[0].integrated >= 16)
    assert seen[-1] >= 16 and all(x < 16 for x in seen[:-1]), "did not stop right after the event that made it true"
    assert not cut.done and cut.events < whole.events
    t_end = cut.run()  # the rest: the two parts are the uninterrupted run
    assert t_end == whole.t and cut.events == whole.events
    assert torch.equal(cut.roles[0].theta, whole.roles[0].theta)


def test_server_state_round_trips_bit_exactly():
    torch.manual_seed(0)
    theta = torch.randn(20)
    a = LocalServer(theta, [2, 3], 0.2, 0.9, 3, parent=0, push_every=2, alpha=0.25, progress_scale=2)
    b = LocalServer(torch.zeros(20), [2, 3], 0.2, 0.9, 3, parent=0, push_every=2, alpha=0.25, progress_scale=2)
    msgs = [(2, Msg(Kind.PGRAD, torch.randn(20), steps=4)) for _ in range(5)]
    msgs.insert(3, (0, Msg(Kind.GLOBAL, torch.randn(20), progress=8.0)))
    for src, m in msgs[:4]:
        a.handle(src, m)
    b.load_state_dict(a.state_dict())
    for src, m in msgs[4:]:
        out_a, out_b = a.handle(src, m), b.handle(src, m)
        assert [(d, x.kind, x.steps) for d, x in out_a] == [(d, x.kind, x.steps) for d, x in out_b]
    for k in ("theta", "snapshot"):
        assert torch.equal(getattr(a, k), getattr(b, k))
    assert torch.equal(a.dn.m, b.dn.m) and torch.equal(a.dn.delta, b.dn.delta) and a.dn.t == b.dn.t
    g = GlobalServer(theta, [1, 4], 0.15, 0.5, 2, budget=100)
    g.handle(1, Msg(Kind.PUSH, torch.randn(20), steps=3))
    h = GlobalServer(torch.zeros(20), [1, 4], 0.15, 0.5, 2, budget=100)
    h.load_state_dict(g.state_dict())
    assert torch.equal(g.theta, h.theta) and torch.equal(g.dn.delta, h.dn.delta) and h.integrated == 3


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def test_simulated_run_resumes_exactly(tmp_path):
    torch.set_num_threads(1)
    dcfg = DistConfig(algo="halos", regions=TWO_REGIONS, simulate=True, step_ms=20.0, halos=HalosConfig(push_every=2))
    whole = train(dist_cfg(tmp_path / "whole", dcfg, steps=10, every=0))
    cfg = dist_cfg(tmp_path / "cut", dcfg, steps=10, every=3)
    train(cfg)
    ckpts = sorted((tmp_path / "cut" / "ckpt").glob("step_*"))
    assert len(ckpts) >= 3
    for c in ckpts[-2:]:  # as if it had been killed after its first checkpoints
        shutil.rmtree(c)
    resumed = train(cfg)
    assert resumed["val_loss"] == whole["val_loss"] and resumed["time_s"] == whole["time_s"]
    a = torch.load(sorted((tmp_path / "whole" / "ckpt").glob("step_*"))[-1] / "state.pt", weights_only=True)
    b = torch.load(sorted((tmp_path / "cut" / "ckpt").glob("step_*"))[-1] / "state.pt", weights_only=True)
    ta, tb = dict(_tensors(a["sim"])), dict(_tensors(b["sim"]))
    assert ta.keys() == tb.keys() and len(ta) > 20
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k} differs after resume"
    assert json.loads((tmp_path / "cut" / "result.json").read_text())["worker_steps"] == whole["worker_steps"]
