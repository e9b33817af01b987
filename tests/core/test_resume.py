"""Exact resume: an interrupted run continues bit-identically, even when killed in the middle of a save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from genai_train.config import ConfigError
from genai_train.lm import build_trainer

from .lm_helpers import params, tiny_cfg

ROOT = Path(__file__).resolve().parents[2]


class _Stop(Exception):
    pass


def _stop_at(step_to_stop: int):
    def cb(trainer, step):
        if step == step_to_stop:
            raise _Stop

    return cb


def _run(cfg, callbacks=()):
    trainer, _ = build_trainer(cfg, callbacks=callbacks)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_matches_uninterrupted_run(tmp_path, grad_accum):
    straight = _run(tiny_cfg(tmp_path / "a", steps=10, every=5, grad_accum=grad_accum))
    with pytest.raises(_Stop):  # dies at step 7; the newest complete checkpoint is step 5
        _run(tiny_cfg(tmp_path / "b", steps=10, every=5, grad_accum=grad_accum), callbacks=[_stop_at(7)])
    resumed = _run(tiny_cfg(tmp_path / "b", steps=10, every=5, grad_accum=grad_accum))
    assert resumed.resumed_from == 5
    a, b = params(straight.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed parameters differ from the uninterrupted run"
    ea, eb = params(straight.ema.module), params(resumed.ema.module)
    assert all(torch.equal(ea[k], eb[k]) for k in ea), "resumed EMA differs"
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # the logged losses of steps 6..10 are the same numbers
    la = [r["loss"] for r in straight.history if r["step"] > 5]
    lb = [r["loss"] for r in resumed.history if r["step"] > 5]
    assert la == lb


def test_shape_changing_config_is_refused_on_resume(tmp_path):
    _run(tiny_cfg(tmp_path / "r", steps=2, every=1))
    cfg = tiny_cfg(tmp_path / "r", steps=4, every=1)
    cfg.model.d_model = 64
    with pytest.raises(ConfigError, match=r"model.d_model: 32 -> 64"):
        build_trainer(cfg)


def test_other_config_changes_warn_on_resume(tmp_path):
    _run(tiny_cfg(tmp_path / "r", steps=2, every=1))
    cfg = tiny_cfg(tmp_path / "r", steps=3, every=1)
    cfg.optim.lr = 1e-3
    with pytest.warns(UserWarning, match=r"optim.lr: 0.003 -> 0.001"):
        trainer, _ = build_trainer(cfg)
    trainer.close()
    assert trainer.step == 2


_CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from tests.core.lm_helpers import tiny_cfg
    import genai_train.checkpoint as ck
    from genai_train.lm import build_trainer

    where, kill_step = sys.argv[2], int(sys.argv[3])
    real_save, real_marker = torch.save, ck._write_durable

    def save(obj, f, *a, **k):
        if obj["step"] == kill_step and where == "state":
            f.write(b"PK\\x03\\x04 partial")  # a few bytes of the zip, then death
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)

    def marker(path, data):
        if where == "marker" and b'"step": %d,' % kill_step in data:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_marker(path, data)

    ck.torch.save = save
    ck._write_durable = marker
    trainer, _ = build_trainer(tiny_cfg(sys.argv[1], steps=6, every=2, ema=False))
    trainer.fit()
""")


@pytest.mark.parametrize("where", ["state", "marker"])
def test_sigkill_while_saving_keeps_previous_checkpoint(tmp_path, where):
    torch.set_num_threads(1)
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(root=str(ROOT)))
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(script), str(run), where, "4"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    from genai_train.checkpoint import Checkpointer

    ck = Checkpointer(run / "ckpt", task="lm")
    step, _ = ck.load_latest()
    assert step == 2, "the checkpoint before the killed save must be the newest complete one"
    resumed = _run(tiny_cfg(run, steps=6, every=2, ema=False))
    assert resumed.resumed_from == 2 and resumed.step == 6
    straight = _run(tiny_cfg(tmp_path / "straight", steps=6, every=2, ema=False))
    a, b = params(straight.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    leftovers = [p.name for p in (run / "ckpt").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == [], f"the killed save's temporary folder was not cleaned up: {leftovers}"
