"""``genai-train <task> <verb> --config file.yaml --section.field=value``.

Tasks are registered by module path and imported only when named, so ``genai-train --help`` stays fast and
works on machines where a trainer's heavy dependencies (gsplat, diffusers, transformers) are missing.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

from genai_train.config import ConfigError, closest, config_to_dict, field_help, load_config

# task -> (module with COMMANDS and optionally demo(out_dir), one-line description)
TASKS: dict[str, tuple[str, str]] = {
    "diffusion": ("diffusion.cli", "Patch Diffusion: train on image patches with coordinate channels, sample, export"),
    "splat": ("splatting.cli", "3D Gaussian Splatting from COLMAP with ADC or SteepGS densification"),
    "grow": ("growth.cli", "LiGO: grow a small trained transformer into a deeper, wider one"),
    "lm": ("genai_train.lm", "byte-level GPT on a text file (the core's reference task)"),
}
BUILTINS = {
    "env": "print versions, the device chosen, and whether gsplat's CUDA path and Triton are usable",
    "demo": "run every trainer's short demo on built-in data; outputs go under runs/demo/",
}
DEMO_MARKER = ".genai-train-demo"

USAGE = """usage: genai-train <task> [<verb>] [--config FILE.yaml] [--section.field=value ...]
       genai-train env | demo [--out DIR] [--only TASK,...]

Train generative models cheaply on one GPU or a laptop.

tasks:
{tasks}

commands:
{builtins}

`genai-train <task> --help` lists a task's verbs; `genai-train <task> <verb> --help` lists every config key
with its default. Config precedence: dataclass defaults < --config YAML < --key=value flags.
"""


class UsageError(Exception):
    pass


def _usage() -> str:
    tasks = "\n".join(f"  {k:<10} {v[1]}" for k, v in TASKS.items())
    builtins = "\n".join(f"  {k:<10} {v}" for k, v in BUILTINS.items())
    return USAGE.format(tasks=tasks, builtins=builtins)


def load_task(task: str):
    if task not in TASKS:
        raise UsageError(f"unknown task '{task}'" + closest(task, list(TASKS) + list(BUILTINS)))
    module_name = TASKS[task][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            raise UsageError(f"task '{task}' is not available in this installation ({module_name} is missing)") from e
        raise UsageError(
            f"task '{task}' needs the package '{e.name}', which is not installed; "
            f"run `pip install -e .` in the repository (or `make demo`)"
        ) from e


def _task_help(task: str, module) -> str:
    lines = [
        f"usage: genai-train {task} <verb> [--config FILE.yaml] [--key=value ...]",
        "",
        TASKS[task][1],
        "",
        "verbs:",
    ]
    for verb, cmd in module.COMMANDS.items():
        lines.append(f"  {verb or '(default)':<10} {cmd.help}")
    return "\n".join(lines)


def _command_help(task: str, verb: str, cmd, config_path: str | None = None, overrides=()) -> str:
    lines = [
        f"usage: genai-train {task}{' ' + verb if verb else ''} [--config FILE.yaml] [--key=value ...]",
        "",
        cmd.help,
    ]
    if cmd.example:
        lines += ["", f"example: {cmd.example}"]
    if cmd.shortcuts:
        lines += ["", "shortcuts:"] + [f"  --{k:<20} = --{v}" for k, v in cmd.shortcuts.items()]
    if cmd.config is not None:
        # the values the given flags resolve to; a tagged-union section (e.g. --strategy.name) shows its variant
        cfg = load_config(cmd.config, config_path, overrides)
        defaults = _flat_defaults(cfg)
        lines += ["", "config keys (default) :"]
        for key, text in field_help(cmd.config, config_to_dict(cfg)).items():
            flag = f"--{key}={defaults.get(key)}"
            lines.append(f"  {flag:<36} {text}")
    return "\n".join(lines)


def _flat_defaults(cfg, prefix: str = "") -> dict:
    import dataclasses

    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_flat_defaults(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = v
    return out


def parse_flags(args: list[str], shortcuts: dict[str, str]) -> tuple[str | None, list[str], bool]:
    """-> (config file, ['--a.b=c', ...], wants help). Accepts ``--k=v`` and ``--k v``."""
    config, overrides, want_help = None, [], False
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-h", "--help"):
            want_help = True
            i += 1
            continue
        if not a.startswith("--"):
            raise UsageError(f"unexpected argument '{a}'; options look like --section.field=value")
        key, eq, value = a[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and args[i + 1] != "--"):
                raise UsageError(f"option --{key} needs a value: --{key}=VALUE")
            value = args[i + 1]
            i += 1
        i += 1
        if key == "config":
            config = value
            continue
        key = shortcuts.get(key, shortcuts.get(key.replace("-", "_"), key))
        overrides.append(f"--{key}={value}")
    return config, overrides, want_help


def run_command(task: str, argv: list[str]) -> int:
    module = load_task(task)
    commands = module.COMMANDS
    verb = ""
    if argv and not argv[0].startswith("-"):
        verb = argv[0]
        argv = argv[1:]
        if verb not in commands:
            verbs = [v for v in commands if v]
            raise UsageError(f"unknown verb '{verb}' for task '{task}'" + closest(verb, verbs))
    elif "" not in commands:
        if any(a in ("-h", "--help") for a in argv) or not argv:
            print(_task_help(task, module))
            return 0 if argv else 2
        raise UsageError(f"task '{task}' needs a verb: {', '.join(v for v in commands if v)}")
    cmd = commands[verb]
    config_path, overrides, want_help = parse_flags(argv, cmd.shortcuts)
    if want_help:
        print(_command_help(task, verb, cmd, config_path, overrides))
        return 0
    cfg = load_config(cmd.config, config_path, overrides) if cmd.config is not None else None
    try:
        result = cmd.run(cfg)
    finally:
        dist = sys.modules.get("genai_train.distributed")  # imported only by commands that train
        if dist is not None:
            dist.cleanup()  # leave the torchrun process group so the process exits cleanly
    return result if isinstance(result, int) else 0


def cmd_env() -> int:
    import platform

    import torch

    from genai_train import __version__
    from genai_train.device import available_devices, select_device

    def version(name: str) -> str:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(name)
        except PackageNotFoundError:
            return "not installed"

    print(f"genai-train {__version__}  python {platform.python_version()}  {platform.platform()}")
    for pkg in (
        "torch",
        "torchvision",
        "diffusers",
        "transformers",
        "gsplat",
        "triton",
        "pycolmap",
        "lpips",
        "torchmetrics",
        "galore-torch",
        "apollo-torch",
        "adam-mini",
        "flora-opt",
    ):
        print(f"  {pkg:<13} {version(pkg)}")
    print(f"devices available: {', '.join(available_devices())}; chosen (auto): {select_device('auto')}")
    print(f"threads: {torch.get_num_threads()}")
    cuda = torch.cuda.is_available()
    if cuda:
        print(f"CUDA: {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s)")
    gsplat_ok = cuda and version("gsplat") != "not installed"
    reason = (
        ""
        if gsplat_ok
        else (" (no CUDA device: the pure-PyTorch rasterizer is used)" if not cuda else " (gsplat is not installed)")
    )
    print(f"gsplat CUDA rasterizer usable: {'yes' if gsplat_ok else 'no'}{reason}")
    from genai_train.kernels import KERNELS, active_kernels

    active = active_kernels(select_device("auto"))
    if active:
        print(f"Triton kernels active (optim.kernels=auto): {', '.join(active)}")
    else:
        reason = "no CUDA device" if not cuda else "triton is not installed"
        names = ", ".join(KERNELS)
        print(f"Triton kernels not used ({reason}): the pure-torch twins run for {names}")
    return 0


def cmd_demo(argv: list[str]) -> int:
    import shutil

    _, overrides, want_help = parse_flags(argv, {})
    opts = dict(o[2:].split("=", 1) for o in overrides)
    unknown = set(opts) - {"out", "only"}
    if want_help:
        print("usage: genai-train demo [--out runs/demo] [--only lm,diffusion,splat,grow]\n\n" + BUILTINS["demo"])
        return 0
    if unknown:
        k = sorted(unknown)[0]
        raise UsageError(f"unknown demo option --{k}" + closest(k, ["out", "only"]))
    out = Path(opts.get("out", "runs/demo"))
    only = [t for t in opts.get("only", "").split(",") if t]
    for t in only:
        if t not in TASKS:
            raise UsageError(f"unknown task '{t}' in --only" + closest(t, list(TASKS)))
    order = ["lm", "diffusion", "splat", "grow"]
    summary: dict[str, dict] = {}
    for task in order:
        if only and task not in only:
            continue
        try:
            module = load_task(task)
        except UsageError as e:
            print(f"[demo] {task}: skipped ({e})", file=sys.stderr)
            continue
        if not hasattr(module, "demo"):
            continue
        task_dir = out / task
        if task_dir.exists():
            if not (task_dir / DEMO_MARKER).exists():
                raise UsageError(f"{task_dir} exists and is not a demo folder; pass --out to another folder")
            shutil.rmtree(task_dir)
        task_dir.mkdir(parents=True)
        (task_dir / DEMO_MARKER).write_text("outputs of `genai-train demo`; replaced on every demo run\n")
        print(f"[demo] {task}: {TASKS[task][1]}", file=sys.stderr)
        t0 = time.perf_counter()
        artifacts = module.demo(task_dir)
        seconds = time.perf_counter() - t0
        summary[task] = {"seconds": round(seconds, 1), "artifacts": artifacts}
        print(f"[demo] {task} done in {seconds:.0f} s", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\ndemo outputs:")
    for task, info in summary.items():
        print(f"  {task} ({info['seconds']} s)")
        for what, path in info["artifacts"].items():
            print(f"    {what:<14} {path}")
    print(f"  summary        {out / 'summary.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(_usage())
            return 0 if argv else 2
        if argv[0] == "--version":
            from genai_train import __version__

            print(__version__)
            return 0
        head, rest = argv[0], argv[1:]
        if head == "env":
            return cmd_env()
        if head == "demo":
            return cmd_demo(rest)
        return run_command(head, rest)
    except UsageError as e:
        print(f"genai-train: error: {e}", file=sys.stderr)
        return 2
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"genai-train: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        ckpt = sys.modules.get("genai_train.checkpoint")  # run-dir and checkpoint errors are the user's to fix
        if ckpt is not None and isinstance(e, (ckpt.RunDirError, ckpt.CheckpointError)):
            print(f"genai-train: error: {e}", file=sys.stderr)
            return 2
        raise
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(
            "genai-train: interrupted; the last complete checkpoint is kept and `--ckpt.resume=auto` continues from it",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
