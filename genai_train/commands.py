"""What a task module hands the CLI: a table of verbs, each a help line, a config dataclass and a function.

A task package (``diffusion``, ``splatting``, ``growth``, or the core ``lm`` task) has a ``cli`` module with

    COMMANDS: dict[str, Command]        # verb -> command; verb "" is the default (``genai-train grow ...``)
    def demo(out_dir: Path) -> dict[str, str]   # optional: a few-minute run for ``genai-train demo``;
                                                # returns {"what": "path"} of the artifacts it wrote

The CLI imports that module only when the task is named, so ``genai-train --help`` never imports
gsplat, diffusers or transformers.

Every flag is a config key: ``--optim.lr=3e-4`` sets ``cfg.optim.lr``; ``shortcuts`` lets a command accept
``--data FOLDER`` for ``--data.root=FOLDER``. ``run(cfg)`` receives the fully resolved, validated config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Command:
    help: str
    run: Callable[[Any], Any]
    config: type | None = None
    shortcuts: dict[str, str] = field(default_factory=dict)
    example: str = ""
