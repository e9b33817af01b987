"""3D Gaussian Splatting training on the core run lifecycle.

3D Gaussian Splatting for Real-Time Radiance Field Rendering, https://arxiv.org/abs/2308.04079, with the
optimization setup of gsplat's ``simple_trainer.py``: loss (1 - lambda) L1 + lambda (1 - SSIM) with
lambda = 0.2, one optimizer per attribute (``optim.name``: Adam, selective Adam or Adam-mini, see
``splatting/optim.py``; means LR decays exponentially to 1% over the run, scaled by the scene size), SH
degree raised by one every ``sh_degree_interval`` steps, and a densification strategy object driven by
``step_pre_backward`` / ``accumulate`` / ``refine``. Selective Adam updates the Gaussians that any view of
the step (on any rank) sees.

One optimizer step sees ``world_size x train.grad_accum`` views: every rank draws the same indices from the
shared seeded sampler and renders its own slice; gradients are summed over views and ranks, then divided
once by the number of views (so one process with ``grad_accum=2`` equals two ranks with 1), and the
densification statistics of the step's views are summed over ranks the same way, so every rank holds the
same Gaussians and makes the same densification decision. Rank 0 alone writes.
"""

from __future__ import annotations

import json
import time

import torch
import torch.distributed as torch_dist
from torch import Tensor

from genai_train.distributed import DistInfo
from genai_train.run import Run, Value
from splatting.colmap import Scene, format_report, load_scene
from splatting.config import DataConfig, OptimConfig, TrainConfig
from splatting.evaluate import eval_background, evaluate, render_view
from splatting.gaussians import GaussianModel, empty_gaussians, init_gaussians
from splatting.metrics import ssim
from splatting.optim import build_optimizers, state_bytes, visibility
from splatting.ply import save_ply

__all__ = [
    "SHAPE_KEYS",
    "train",
    "load_train_scene",
    "make_optimizers",
    "means_lr",
    "training_loss",
    "initial_points",
    "seen_by",
    "Optimizers",
]

# What a resume cannot change: the SH degree fixes the shape of shN; the scene and its split fix which views
# exist (and so what the saved sampler position means); the saved strategy state belongs to one algorithm.
SHAPE_KEYS = (
    "sh_degree",
    "strategy.name",
    "data.root",
    "data.factor",
    "data.test_every",
    "data.normalize",
    "data.image_dir",
    "optim.name",
)


class Optimizers(dict):
    """The per-attribute optimizers as one named stateful object (the strategies rewrite their rows in place)."""

    def state_dict(self) -> dict:
        return {k: o.state_dict() for k, o in self.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, o in self.items():
            o.load_state_dict(state[k])


class SamplerState:
    """A ``torch.Generator`` (view and background draws) as a stateful object."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"].cpu())


def seen_by(
    points: Tensor, views, images: list[Tensor] | None = None, near: float = 1e-2
) -> tuple[Tensor, Tensor | None]:
    """How many of ``views`` see each point (in front of the camera by more than ``near``, projecting inside
    the image) and, with ``images`` ([H, W, 3] per view), the mean colour of the pixels it lands on (zero
    where no view sees it). points [N, 3] -> counts [N] (int), colours [N, 3] or None."""
    counts = torch.zeros(len(points), dtype=torch.long)
    csum = torch.zeros(len(points), 3) if images is not None else None
    for i, v in enumerate(views):
        w2c = v.viewmat.to(points)
        pc = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[:, 2]
        uv = pc[:, :2] / z.clamp_min(near)[:, None] * v.K[[0, 1], [0, 1]].to(points) + v.K[:2, 2].to(points)
        ok = (z > near) & (uv[:, 0] >= 0) & (uv[:, 0] < v.width) & (uv[:, 1] >= 0) & (uv[:, 1] < v.height)
        counts += ok.long()
        if images is not None:
            px = uv[ok].long()
            csum[ok] += images[i][px[:, 1], px[:, 0]].to(csum)
    colors = csum / counts.clamp_min(1)[:, None].to(csum) if csum is not None else None
    return counts, colors


def initial_points(scene, cfg: TrainConfig, generator: torch.Generator, log=None) -> tuple[Tensor, Tensor]:
    """The SfM points and colours, plus ``cfg.init_random`` random ones (gsplat's random init): uniform in the
    cube [-e, e]^3, e = init_extent x scene scale, kept where at least ``init_views`` training cameras see
    them (drawn until there are enough), coloured by the training pixels they project to or at random."""
    points, colors = scene.points, scene.point_colors
    if not cfg.init_random:
        return points, colors
    half = cfg.init_extent * scene.scene_scale
    want, kept, drawn = cfg.init_random, [], 0
    while sum(len(k) for k in kept) < want and drawn < 100 * want:
        cand = (torch.rand(want, 3, generator=generator) * 2 - 1) * half
        drawn += want
        if cfg.init_views:
            cand = cand[seen_by(cand, scene.train)[0] >= cfg.init_views]
        kept.append(cand)
    extra = torch.cat(kept)[:want]
    if len(extra) < want and log is not None:
        log.info(
            f"init_random: only {len(extra)} of {want} random points are seen by >= {cfg.init_views} "
            f"training views within the cube of half-side {cfg.init_extent} x scene scale"
        )
    if cfg.init_color == "image":
        extra_colors = seen_by(extra, scene.train, [scene.image(v) for v in scene.train])[1]
    else:
        extra_colors = torch.rand(len(extra), 3, generator=generator)
    return torch.cat([points, extra]), torch.cat([colors, extra_colors])


def make_optimizers(
    params: torch.nn.ParameterDict, lr: OptimConfig, scene_scale: float
) -> dict[str, torch.optim.Optimizer]:
    """One ``optim.name`` optimizer per attribute with gsplat's learning rates (eps 1e-15 as in the reference
    code); see ``splatting/optim.py``."""
    rates = {
        "means": lr.means * scene_scale,
        "scales": lr.scales,
        "quats": lr.quats,
        "opacities": lr.opacities,
        "sh0": lr.sh0,
        "shN": lr.shN,
    }
    return build_optimizers(params, lr.name, rates)


def means_lr(lr: OptimConfig, scene_scale: float, step: int, total: int) -> float:
    """Exponential decay lr0 * ratio^(step / total) (gsplat's ExponentialLR, gamma = ratio^(1/total))."""
    return lr.means * scene_scale * lr.means_final_ratio ** (step / total)


def training_loss(img: Tensor, gt: Tensor, params: dict[str, Tensor], cfg: TrainConfig) -> tuple[Tensor, Tensor]:
    """(loss, L1): (1 - l) L1 + l (1 - SSIM), plus the optional opacity and scale regularizers and the
    strategy's own (3DGS-MCMC's)."""
    l1 = (img - gt).abs().mean()
    loss = (1 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1 - ssim(img, gt, padding="valid"))
    loss = loss + cfg.strategy.regularization(params)
    if cfg.opacity_reg:
        loss = loss + cfg.opacity_reg * torch.sigmoid(params["opacities"]).mean()
    if cfg.scale_reg:
        loss = loss + cfg.scale_reg * torch.exp(params["scales"]).mean()
    return loss, l1


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


def _backgrounds(kind: str, n: int, device, gen: torch.Generator) -> Tensor | None:
    """[n, 3] backgrounds of the step's views (None: black); random ones are drawn for all ranks' views."""
    if kind == "black":
        return None
    if kind == "white":
        return torch.ones(n, 3, device=device)
    return torch.rand(n, 3, generator=gen).to(device)


def load_train_scene(data: DataConfig) -> Scene:
    """The scene of ``data``, checked before anything is written: a refused scene creates no run folder."""
    if not data.root:
        raise ValueError("no scene given: pass --scene DIR (a COLMAP folder with images/ and sparse/)")
    return load_scene(
        data.root,
        data.factor,
        data.test_every,
        data.normalize,
        data.image_dir,
        data.cache_dir or None,
        skip_unreadable=data.skip_unreadable,
    )


def _all_reduce_sum(tensors: list[Tensor], dist: DistInfo) -> None:
    """Sum ``tensors`` over ranks in place, as one flat buffer."""
    if not dist.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch_dist.all_reduce(flat)
    for t, v in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(v.view_as(t))


def _merge_statistics(state: dict, delta: dict, dist: DistInfo) -> None:
    """Add the step's densification statistics (summed over ranks) to the strategy's running sums."""
    keys = [k for k, v in delta.items() if isinstance(v, Tensor)]
    _all_reduce_sum([delta[k] for k in keys], dist)
    for k in keys:
        old = state.get(k)
        state[k] = delta[k] if old is None or old.shape != delta[k].shape else old.add_(delta[k])


def train(cfg: TrainConfig, scene: Scene | None = None, stop_after: int | None = None) -> dict:
    """Train on ``cfg.data.root`` (or a preloaded ``scene``); returns the final metrics.

    ``stop_after`` ends the run after that many steps, as an interruption would (tests use it).
    """
    scene = scene if scene is not None else load_train_scene(cfg.data)
    if not scene.train:
        raise ValueError(
            f"{scene.root}: no training views left after holding out every "
            f"{cfg.data.test_every}-th image; lower data.test_every or set it to 0"
        )
    run = Run("splat", cfg, shape_keys=SHAPE_KEYS)
    try:
        return _train(run, cfg, scene, stop_after)
    finally:
        run.close()


def _train(run: Run, cfg: TrainConfig, scene: Scene, stop_after: int | None) -> dict:
    device, dist = run.device, run.dist
    if run.use_autocast:
        run.info(f"run.precision={cfg.run.precision}: ignored, the rasterizer runs in fp32")
    gts = {v.name: scene.image(v).to(device) for v in scene.train}
    scene_scale = scene.scene_scale * 1.1
    settings, backend = cfg.render.settings(), cfg.render.backend
    strategy = cfg.strategy.build()
    sampler = torch.Generator().manual_seed(cfg.run.seed)

    if run.checkpoint is not None:  # sized like the saved Gaussians; restore fills them
        params = empty_gaussians(len(run.checkpoint["gaussians"]["means"]), cfg.sh_degree).to(device)
    else:
        init_gen = torch.Generator().manual_seed(cfg.run.seed)
        points, colors = initial_points(scene, cfg, init_gen, run.logger)
        params = init_gaussians(points, colors, cfg.sh_degree, cfg.init_opacity, cfg.init_scale, generator=init_gen)
        params = params.to(device)
    gaussians = GaussianModel(params)
    optimizers = Optimizers(make_optimizers(params, cfg.optim, scene_scale))
    sstate = Value(strategy.initialize_state(scene_scale, seed=cfg.run.seed))
    stateful = dict(gaussians=gaussians, optimizers=optimizers, strategy=sstate, sampler=SamplerState(sampler))
    start = run.restore(**stateful)  # the run is accepted (or refused) here: only now is anything written
    for line in format_report(scene.report):
        run.info(line)
    if run.is_main:  # the loader's report and the normalization, which PLY export inverts (splatting/ply.py)
        (run.dir / "scene.json").write_text(json.dumps(scene.report, indent=2))
    strategy.check_sanity(params, optimizers)
    n_param_bytes = sum(p.numel() * p.element_size() for p in params.values())
    run.info(
        f"{len(scene.train)} train / {len(scene.test)} test views at {scene.train[0].width}x"
        f"{scene.train[0].height}, {len(gaussians)} Gaussians, device {device}, params "
        f"{n_param_bytes / 2**20:.1f} MiB, optimizer {cfg.optim.name}"
    )

    total, accum = cfg.train.steps, cfg.train.grad_accum
    n_views = dist.world_size * accum  # views of one optimizer step, over all ranks
    mine = range(dist.rank * accum, (dist.rank + 1) * accum)
    t_start = time.perf_counter()
    skipped, last_loss, opt_seconds = 0, float("nan"), 0.0
    selective = cfg.optim.name == "selective_adam"
    end = total if stop_after is None else min(total, start + stop_after)
    bar = run.logger.progress(total, initial=start, desc="splat")
    for step in range(start, end):
        for g in optimizers["means"].param_groups:
            g["lr"] = means_lr(cfg.optim, scene_scale, step, total)
        idx = torch.randint(len(scene.train), (n_views,), generator=sampler)  # the same on every rank
        bgs = _backgrounds(cfg.render.background, n_views, device, sampler)
        sh_deg = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        sums, infos = torch.zeros(2, device=device), []  # (loss, L1) summed over this rank's views
        for i in mine:
            view = scene.train[int(idx[i])]
            img, _, info = render_view(params, view, sh_deg, device, settings, backend, None if bgs is None else bgs[i])
            loss, l1 = training_loss(img, gts[view.name], params, cfg)
            info["loss"] = loss.detach()  # SteepGS's split bar is a share of it
            strategy.step_pre_backward(params, optimizers, sstate.value, step, info)
            loss.backward()  # gradients add up over the views; divided once below
            sums += torch.stack([loss.detach(), l1.detach()])
            infos.append(info)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params.values()]
        _all_reduce_sum(grads + [sums], dist)
        for p, g in zip(params.values(), grads):
            p.grad = g.div_(n_views)
        sums /= n_views
        if not (bool(torch.isfinite(sums).all()) and _all_finite(grads)):
            skipped += 1
            run.info(f"step {step}: non-finite loss or gradient; step skipped ({skipped} so far)")
            for o in optimizers.values():
                o.zero_grad(set_to_none=True)
            bar.update(1)
            continue
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.train.grad_clip)
        t_opt = time.perf_counter()
        if selective:  # the Gaussians any view of the step sees, on any rank
            seen = visibility(infos, len(gaussians)).float()
            _all_reduce_sum([seen], dist)
            for o in optimizers.values():
                o.step(visible=seen > 0)
        else:
            for o in optimizers.values():
                o.step()
        opt_seconds += time.perf_counter() - t_opt
        for o in optimizers.values():
            o.zero_grad(set_to_none=True)
        if strategy.accumulates and step < strategy.refine_stop:
            delta = strategy.initialize_state(scene_scale)
            for info in infos:
                strategy.accumulate(params, delta, info)
            _merge_statistics(sstate.value, delta, dist)
        # the means LR after this step's decay: MCMC scales its position noise by it (as gsplat does)
        events = strategy.refine(
            params, optimizers, sstate.value, step, lr=means_lr(cfg.optim, scene_scale, step + 1, total)
        )
        if events.get("opacity_reset"):
            run.info(f"step {step}: opacities reset to {2 * strategy.prune_opa}")
        bar.update(1)
        done = step + 1
        if run.should_log(done, total) or done == end:
            last_loss = float(sums[0])
            run.log(
                done,
                loss=last_loss,
                l1=float(sums[1]),
                n_gaussians=len(gaussians),
                sh_degree=sh_deg,
                skipped=skipped,
                **{k: v for k, v in events.items() if isinstance(v, (int, float))},
            )
        if (run.every and done % run.every == 0) or done == total or done == end:
            _save(run, done, params, stateful)
        if run.is_main and cfg.eval.every and done % cfg.eval.every == 0 and done != total and scene.test:
            bg = eval_background(cfg.render.background, device)
            m = evaluate(params, scene, scene.test, cfg.sh_degree, device, settings, backend, background=bg)
            run.log(done, test_psnr=m["psnr"], test_ssim=m["ssim"])
    bar.close()
    result = {
        "steps_done": end,
        "train_seconds": time.perf_counter() - t_start,
        "skipped_steps": skipped,
        "last_loss": last_loss,
        "n_gaussians": len(gaussians),
        "optimizer": cfg.optim.name,
        "optimizer_state_bytes": state_bytes(optimizers),
        "optimizer_seconds": opt_seconds,  # host time in optimizer.step (asynchronous on CUDA)
        "gaussians": gaussians.state_dict(),  # the trained parameters (not written to results.json)
    }
    if end < total or not run.is_main:  # interrupted on purpose, or not the rank that writes
        return result
    if scene.test:
        m = evaluate(
            params,
            scene,
            scene.test,
            cfg.sh_degree,
            device,
            settings,
            backend,
            run.dir / "test_renders" if cfg.eval.save_images else None,
            cfg.eval.lpips_net,
            cfg.eval.lpips_weights,
            log=run.info,
            background=eval_background(cfg.render.background, device),
        )
        result["test"] = m
        run.log(end, test_psnr=m["psnr"], test_ssim=m["ssim"], n_gaussians=m["n_gaussians"])
        run.info(
            f"test: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}"
            + (f", LPIPS {m['lpips']:.4f}" if "lpips" in m else "")
            + f", {m['n_gaussians']} Gaussians"
        )
    if cfg.export_ply:
        result["ply"] = str(run.dir / "point_cloud.ply")
        frame = scene.transform if cfg.export_frame == "colmap" else None
        info = save_ply(params, run.dir / "point_cloud.ply", transform=frame)
        if info["dropped_nonfinite"]:
            run.info(f"PLY export dropped {info['dropped_nonfinite']} Gaussians with NaN/Inf attributes")
    (run.dir / "results.json").write_text(json.dumps({k: v for k, v in result.items() if k != "gaussians"}, indent=2))
    return result


def _save(run: Run, step: int, params, stateful: dict) -> None:
    """A checkpoint of every stateful part, unless the Gaussians hold NaN/Inf (the last good one is kept)."""
    if not _all_finite(params.values()):  # identical on every rank: the Gaussians are replicated
        run.info(f"step {step}: parameters hold NaN/Inf; checkpoint NOT saved (the last good one is kept)")
        return
    run.save(step, **stateful)
