import json

import pytest
import torch

from diffusion.sample import SampleConfig, generate
from diffusion.train import DiffusionConfig, load_run, train
from genai_train.config import load_config

from .images import write_images

TINY = [
    "--data.resolution=16",
    "--data.batch_size=3",
    "--model.block_out_channels=[16,32]",
    "--model.attention=[false,true]",
    "--model.norm_num_groups=8",
    "--model.attention_head_dim=8",
    "--schedule.warmup_steps=2",
    "--ema.half_life_steps=2",
    "--preview.every=0",
    "--run.log_every=1",
    "--run.tensorboard=false",
    "--run.device=cpu",
    "--optim.lr=1e-3",
]


def _cfg(tmp_path, run, steps, *extra):
    return load_config(
        DiffusionConfig,
        None,
        [
            f"--data.root={tmp_path / 'imgs'}",
            f"--run.dir={tmp_path / run}",
            f"--train.steps={steps}",
            *TINY,
            *extra,
        ],
    )


@pytest.fixture
def images(tmp_path):
    write_images(tmp_path / "imgs", n=5, size=(16, 16))


def _final_state(run_dir):
    state = torch.load(sorted((run_dir / "ckpt").glob("step_*"))[-1] / "state.pt", weights_only=True)
    return state


def test_resume_matches_uninterrupted_run(tmp_path, images):
    full = train(_cfg(tmp_path, "full", 6, "--ckpt.every=0"))
    part = train(_cfg(tmp_path, "part", 3, "--ckpt.every=3"))  # stops at step 3 ...
    resumed = train(_cfg(tmp_path, "part", 6, "--ckpt.every=3"))  # ... and continues from its checkpoint
    assert resumed.resumed_from == 3
    losses_full = [r["loss"] for r in full.history]
    assert losses_full == [r["loss"] for r in part.history] + [r["loss"] for r in resumed.history]
    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "part")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["module"]:
        assert torch.equal(a["ema"]["module"][key], b["ema"]["module"][key]), key
    assert a["data"]["calls"] == b["data"]["calls"] == 6


def test_patch_steps_use_several_sizes_and_p1_is_full_images(tmp_path, images):
    sizes = []
    t = train(_cfg(tmp_path, "p05", 8, "--ckpt.every=0", "--patch.p=0.5"))
    b = t.batches
    b.load_state_dict({**b.state_dict(), "calls": 0})
    for _ in range(20):
        patches, pos, *_ = b.next_batch(torch.device("cpu"))
        sizes.append((patches.shape[-1], patches.shape[0]))
    assert {s for s, _ in sizes} == {4, 8, 16}
    assert all(n == 3 * 16 // s for s, n in sizes)  # batch multiplier R / P
    t1 = train(_cfg(tmp_path, "p1", 2, "--ckpt.every=0", "--patch.p=1.0"))
    assert t1.batches.next_batch(torch.device("cpu"))[0].shape == (3, 3, 16, 16)


def test_export_reloads_identically_with_stock_diffusers(tmp_path, images):
    from diffusers import EDMEulerScheduler, UNet2DModel

    from diffusion.export import export_model, load_any, load_exported

    train(_cfg(tmp_path, "run", 2, "--ckpt.every=0"))
    model, cfg, step = load_run(tmp_path / "run")
    assert step == 2
    out = export_model(model, cfg.edm, cfg.data.resolution, tmp_path / "export")
    unet = UNet2DModel.from_pretrained(out, subfolder="unet")  # stock diffusers
    assert unet.config.in_channels == 5 and unet.config.out_channels == 3
    EDMEulerScheduler.from_pretrained(out, subfolder="scheduler")
    assert json.loads((out / "edm.json").read_text())["sigma_data"] == 0.5
    for k, v in model.unet.state_dict().items():
        assert torch.equal(unet.state_dict()[k], v), k
    scfg = SampleConfig(steps=3, batch_size=2)
    a = generate(model, 3, scfg, cfg.edm, cfg.data.resolution, seed=7)
    reloaded, edm, res = load_exported(out)
    b = generate(reloaded, 3, scfg, edm, res, seed=7)
    assert res == 16 and torch.equal(a, b)
    c = generate(load_any(tmp_path / "run")[0], 3, scfg, cfg.edm, 16, seed=7)
    assert torch.equal(a, c)
    big = generate(reloaded, 1, SampleConfig(steps=2, size=32), edm, res, seed=7)  # extrapolated canvas
    assert big.shape == (1, 3, 32, 32) and torch.isfinite(big).all()


DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path[:0] = [{root!r}]
from pathlib import Path
import torch.distributed as dist
from tests.diffusion.test_diffusion_train import _cfg
from diffusion.train import train
t = train(_cfg(Path({tmp!r}), "run", 2, "--ckpt.every=0"))
w = torch.cat([p.detach().flatten() for p in t.model.parameters()])
ws = [torch.zeros_like(w) for _ in range(dist.get_world_size())]
dist.all_gather(ws, w)
assert dist.get_world_size() == 2 and torch.equal(ws[0], ws[1]) and t.step == 2
del t  # the DDP wrapper holds the process group: free it before the interpreter shuts down
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_two_gloo_processes_stay_in_sync(tmp_path, images):
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(root=str(tests.parent.parent), tmp=str(tmp_path)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("name", ["galore", "apollo", "apollo_mini", "adam_mini", "flora"])
def test_every_core_optimizer_trains_the_unet_at_its_default_rank(tmp_path, images, name, per_layer):
    """Conv kernels in the low-rank group at the method's default rank (larger than some kernels' sides), in
    both step modes: three finite steps that move the weights."""
    extra = ["--optim.per_layer=true", "--train.grad_clip=0"] if per_layer else []
    t = train(_cfg(tmp_path, name, 3, "--ckpt.every=0", f"--optim.name={name}", *extra))
    assert t.optimizer.__class__.__name__ != "AdamW" and t.per_layer == per_layer
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in t.history if "loss" in r)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
