"""Config of ``genai-train splat``: the training run (``TrainConfig``) and the eval / render / export commands.

Vocabulary shared with every trainer: ``run`` (the core's :class:`RunConfig`), ``train`` (the core's
:class:`LoopConfig`: ``train.steps``; ``train.grad_accum`` views per optimizer step; ``train.grad_clip``, 0 =
off), ``optim``; then splatting's own sections: ``data``, ``strategy`` (a tagged union picked by
``--strategy.name=adc|steepgs|mcmc``), ``render``, ``ckpt``, ``eval``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from genai_train.checkpoint import CheckpointConfig
from genai_train.run import LoopConfig, RunConfig, path_field
from splatting.optim import OPTIMIZERS, OptimName
from splatting.render import RasterSettings
from splatting.strategies import ADCConfig, MCMCConfig, SteepGSConfig

__all__ = [
    "DataConfig",
    "RenderConfig",
    "OptimConfig",
    "EvalConfig",
    "TrainConfig",
    "EvalCommandConfig",
    "RenderCommandConfig",
    "ExportCommandConfig",
    "RunConfig",
    "LoopConfig",
    "ADCConfig",
    "SteepGSConfig",
    "MCMCConfig",
]


@dataclass
class DataConfig:
    root: str = path_field("", "COLMAP scene folder (with images/ and sparse/)")
    factor: int = field(default=4, metadata={"help": "downscale images by this factor (resized copies are cached)"})
    test_every: int = field(default=8, metadata={"help": "hold out every N-th image (sorted by name) for testing"})
    normalize: bool = field(default=True, metadata={"help": "normalize the world like gsplat's COLMAP parser"})
    image_dir: str = field(default="images", metadata={"help": "image folder inside the scene folder"})
    cache_dir: str = path_field("", "where resized images go (default ~/.cache/genai-train)")
    skip_unreadable: bool = field(
        default=False,
        metadata={
            "help": "drop missing, corrupt or truncated images from the split with a warning (default: refuse "
            "the run and name them)"
        },
    )

    def __post_init__(self):
        if self.factor < 1:
            raise ValueError(f"data.factor must be >= 1, got {self.factor}")
        if self.test_every < 0:
            raise ValueError(f"data.test_every must be >= 0 (0: no test split), got {self.test_every}")


@dataclass
class RenderConfig:
    backend: Literal["auto", "torch", "gsplat"] = field(
        default="auto", metadata={"help": "auto: gsplat CUDA on a GPU when installed, else our PyTorch rasterizer"}
    )
    tile_size: int = field(default=8, metadata={"help": "tile size in pixels (the image does not depend on it)"})
    chunk_elems: int = field(default=1 << 22, metadata={"help": "fragments per compositing chunk (bounds memory)"})
    store_elems: int = field(
        default=1 << 26,
        metadata={
            "help": "forward fragment values (4 bytes each) kept per render for the backward, which recomputes the "
            "rest; 0 recomputes all (least memory, slower)"
        },
    )
    background: Literal["black", "white", "random"] = field(
        default="black", metadata={"help": "background colour behind the Gaussians while training"}
    )
    mode: Literal["classic", "antialiased"] = field(
        default="classic",
        metadata={
            "help": "antialiased: gsplat's 2-D filter with opacity compensation (sqrt(det(S) / det(S + 0.3 I))); "
            "eval and render use the run's mode"
        },
    )

    def __post_init__(self):
        if self.tile_size < 1 or self.chunk_elems < 1 or self.store_elems < 0:
            raise ValueError("render.tile_size and render.chunk_elems must be >= 1, render.store_elems >= 0")

    def settings(self) -> RasterSettings:
        return RasterSettings(
            tile_size=self.tile_size, chunk_elems=self.chunk_elems, store_elems=self.store_elems, mode=self.mode
        )


@dataclass
class OptimConfig:
    """One optimizer per Gaussian attribute with gsplat's learning rates (eps 1e-15 as in the reference code)."""

    name: OptimName = field(
        default="adam",
        metadata={
            "help": "optimizer, one per attribute: adam; selective_adam (updates only the Gaussians the step's "
            "views see); adam_mini (one second moment per Gaussian and attribute)"
        },
    )
    means: float = field(default=1.6e-4, metadata={"help": "means LR (x scene scale), decays to means_final_ratio"})
    means_final_ratio: float = field(default=0.01, metadata={"help": "means LR at the last step / initial"})
    scales: float = field(default=5e-3, metadata={"help": "log-scale LR"})
    quats: float = field(default=1e-3, metadata={"help": "quaternion LR"})
    opacities: float = field(default=5e-2, metadata={"help": "logit-opacity LR"})
    sh0: float = field(default=2.5e-3, metadata={"help": "SH degree-0 LR"})
    shN: float = field(default=2.5e-3 / 20, metadata={"help": "higher-order SH LR"})

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}; got {self.name!r}")
        for k in ("means", "scales", "quats", "opacities", "sh0", "shN"):
            if getattr(self, k) < 0:
                raise ValueError(f"optim.{k} must be >= 0, got {getattr(self, k)}")
        if not 0 < self.means_final_ratio <= 1:
            raise ValueError(f"optim.means_final_ratio must be in (0, 1], got {self.means_final_ratio}")


@dataclass
class EvalConfig:
    every: int = field(default=0, metadata={"help": "evaluate on the test views every N steps (0: only at the end)"})
    lpips_net: Literal["alex", "vgg"] = field(default="alex", metadata={"help": "LPIPS backbone"})
    lpips_weights: str = field(default="", metadata={"help": "local backbone weights file (else torch hub cache)"})
    save_images: bool = field(default=True, metadata={"help": "write rendered test views as PNG"})


@dataclass
class TrainConfig:
    """3D Gaussian Splatting on one COLMAP scene (gsplat's ``simple_trainer`` defaults)."""

    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/splat", seed=42, log_every=100))
    train: LoopConfig = field(default_factory=lambda: LoopConfig(steps=30_000, grad_clip=0.0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sh_degree: int = field(default=3, metadata={"help": "final SH degree (0..3)"})
    sh_degree_interval: int = field(default=1000, metadata={"help": "raise the SH degree by one every N steps"})
    init_opacity: float = field(default=0.1, metadata={"help": "initial opacity of every Gaussian"})
    init_scale: float = field(default=1.0, metadata={"help": "initial scale = this x mean 3-NN distance"})
    init_random: int = field(
        default=0,
        metadata={
            "help": "add this many random points (uniform in a cube of half-side init_extent x scene scale; see "
            "init_views, init_color) to the SfM points: starts Gaussians where SfM found none, e.g. walls"
        },
    )
    init_extent: float = field(default=3.0, metadata={"help": "half-side of the random-init cube / scene scale"})
    init_views: int = field(
        default=1,
        metadata={
            "help": "keep a random point only if at least this many training cameras see it (0: keep all); a point "
            "no training view sees never gets a gradient and shows up in test views as a stray blob"
        },
    )
    init_color: Literal["image", "random"] = field(
        default="image",
        metadata={"help": "colour of random points: image = mean of the training pixels they project to, or random"},
    )
    ssim_lambda: float = field(default=0.2, metadata={"help": "weight of the D-SSIM term in the loss"})
    opacity_reg: float = field(
        default=0.0,
        metadata={
            "help": "add this x the mean opacity to the loss (as gsplat's --opacity_reg; favours fewer, "
            "solid Gaussians)"
        },
    )
    scale_reg: float = field(
        default=0.0,
        metadata={
            "help": "add this x the mean of the Gaussians' scales (exp of log-scales) to the loss "
            "(gsplat's --scale_reg)"
        },
    )
    strategy: ADCConfig | SteepGSConfig | MCMCConfig = field(
        default_factory=ADCConfig, metadata={"help": "densification: --strategy.name=adc | steepgs | mcmc"}
    )
    render: RenderConfig = field(default_factory=RenderConfig)
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export_ply: bool = field(default=True, metadata={"help": "write point_cloud.ply at the end"})
    export_frame: Literal["colmap", "normalized"] = field(
        default="colmap",
        metadata={"help": "PLY frame: colmap = the capture's own (overlays its points and cameras), or normalized"},
    )

    def __post_init__(self):
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {self.sh_degree}")
        if self.sh_degree_interval < 1:
            raise ValueError(f"sh_degree_interval must be >= 1, got {self.sh_degree_interval}")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"init_opacity must be in (0, 1), got {self.init_opacity}")
        if self.init_random < 0 or not self.init_extent > 0:
            raise ValueError(
                f"init_random must be >= 0 and init_extent > 0, got {self.init_random} and {self.init_extent}"
            )
        if self.init_views < 0:
            raise ValueError(f"init_views must be >= 0, got {self.init_views}")
        if not 0 <= self.ssim_lambda <= 1:
            raise ValueError(f"ssim_lambda must be in [0, 1], got {self.ssim_lambda}")
        if self.opacity_reg < 0 or self.scale_reg < 0:
            raise ValueError(f"opacity_reg and scale_reg must be >= 0, got {self.opacity_reg} and {self.scale_reg}")


@dataclass
class EvalCommandConfig:
    background: Literal["auto", "black", "white"] = field(
        default="auto", metadata={"help": "background colour (auto: the one the run trained with)"}
    )
    run_dir: str = field(default="", metadata={"help": "training run folder (newest checkpoint is used)"})
    ply: str = field(default="", metadata={"help": "evaluate this PLY instead of a checkpoint"})
    ply_frame: Literal["colmap", "normalized"] = field(
        default="colmap", metadata={"help": "frame of --ply: colmap (as export writes it) or normalized"}
    )
    scene: str = field(default="", metadata={"help": "scene folder (default: the one the run trained on)"})
    factor: int = field(default=0, metadata={"help": "data factor (0: the run's)"})
    split: Literal["test", "train"] = field(default="test", metadata={"help": "which views to evaluate"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps"})
    backend: Literal["auto", "torch", "gsplat"] = field(default="auto", metadata={"help": "renderer"})
    lpips_net: Literal["alex", "vgg"] = field(default="alex", metadata={"help": "LPIPS backbone"})
    lpips_weights: str = field(default="", metadata={"help": "local LPIPS backbone weights"})
    out: str = field(default="", metadata={"help": "write metrics JSON + renders here (default: run_dir/eval)"})


@dataclass
class RenderCommandConfig:
    background: Literal["auto", "black", "white"] = field(
        default="auto", metadata={"help": "background colour (auto: the one the run trained with)"}
    )
    run_dir: str = field(default="", metadata={"help": "training run folder"})
    ply: str = field(default="", metadata={"help": "render this PLY instead of a checkpoint"})
    ply_frame: Literal["colmap", "normalized"] = field(
        default="colmap", metadata={"help": "frame of --ply: colmap (as export writes it) or normalized"}
    )
    scene: str = field(default="", metadata={"help": "scene folder (for camera intrinsics and path)"})
    factor: int = field(default=0, metadata={"help": "data factor (0: the run's)"})
    mode: Literal["turntable", "views"] = field(default="turntable", metadata={"help": "orbit video or test views"})
    frames: int = field(default=60, metadata={"help": "turntable frames"})
    fps: int = field(default=20, metadata={"help": "turntable frames per second"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps"})
    out: str = field(default="", metadata={"help": "output folder (default: run_dir/render)"})


@dataclass
class ExportCommandConfig:
    run_dir: str = field(default="", metadata={"help": "training run folder (newest checkpoint is exported)"})
    out: str = field(default="", metadata={"help": "PLY path (default: run_dir/point_cloud.ply)"})
    frame: Literal["colmap", "normalized"] = field(
        default="colmap",
        metadata={"help": "colmap = the capture's own frame (overlays its points and cameras), or normalized"},
    )


@dataclass
class ViewCommandConfig:
    run: str = field(default="", metadata={"help": "training run folder (newest checkpoint; its scene's cameras)"})
    ply: str = field(default="", metadata={"help": "show this PLY instead of a checkpoint"})
    port: int = field(default=8080, metadata={"help": "port of the local web server"})
    seconds: float = field(default=0.0, metadata={"help": "stop after this many seconds (0: serve until Ctrl-C)"})
