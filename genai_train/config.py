"""Dataclass configs loaded from YAML files that only override defaults, plus ``--a.b=c`` overrides.

Rules (see STYLE.md): configs are nested dataclasses with paper defaults and a one-line ``help`` per field;
keys are strict (an unknown key names the closest valid one); values are type-checked and coerced from
their declared type, so ``3e-4`` is a float even though YAML 1.1 reads it as a string.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "config_diff",
    "parse_override",
    "field_help",
    "closest",
]


class ConfigError(ValueError):
    """A config file or override is wrong; the message says what and how to fix it."""


def closest(word: str, choices: Sequence[str]) -> str:
    """' (did you mean X?)' for the closest of ``choices``, or a list of the valid ones."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{match[0]}'?)"
    return f" (valid: {', '.join(sorted(choices))})" if choices else ""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


TAG = "name"  # the field that picks the variant of a tagged-union section


def variants(tp: Any) -> dict[str, type] | None:
    """``{tag: class}`` when ``tp`` is a union of config dataclasses told apart by their ``name`` field (a
    tagged union, e.g. ``strategy: ADCConfig | SteepGSConfig``); None for any other type."""
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) < 2 or not all(dataclasses.is_dataclass(a) for a in args):
        return None
    out = {}
    for a in args:
        f = {f.name: f for f in dataclasses.fields(a)}.get(TAG)
        if f is None or f.default is dataclasses.MISSING:
            raise TypeError(f"{a.__name__}: a tagged-union variant needs a '{TAG}' field with a default")
        out[f.default] = a
    return out


def pick_variant(tp: Any, data: Any, default: Any, where: str) -> type:
    """The variant class of a tagged-union section from its ``name`` (else the default's class)."""
    options = variants(tp)
    tag = data.get(TAG) if isinstance(data, dict) else None
    if tag is None:
        return type(default) if default is not None else next(iter(options.values()))
    if tag not in options:
        raise ConfigError(
            f"{where}.{TAG}: {tag!r} is not one of {', '.join(map(repr, options))}" + closest(str(tag), list(options))
        )
    return options[tag]


def field_help(cls: type, data: dict | None = None) -> dict[str, str]:
    """Flattened ``{"a.b": help}`` for every field of a (nested) config dataclass; a tagged-union section
    lists the fields of the variant ``data`` names (else its default's)."""
    out: dict[str, str] = {}
    hints = _hints(cls)
    data = data or {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        sub = data.get(f.name) if isinstance(data.get(f.name), dict) else {}
        if variants(tp) is not None:
            tp = pick_variant(tp, sub, _section_default(f), f.name)
        if dataclasses.is_dataclass(tp):
            for k, v in field_help(tp, sub).items():
                out[f"{f.name}.{k}"] = v
        else:
            out[f.name] = f.metadata.get("help", "")
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the declared type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if variants(tp) is not None:
        if isinstance(value, tuple(variants(tp).values())):
            return value
        return _coerce(value, pick_variant(tp, value, None, where), where)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        for a in args:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise ConfigError(
            f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}"
            + (closest(str(value), [str(a) for a in args]) if isinstance(value, str) else "")
        )
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = None
                if f is not None and f.is_integer():
                    return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads '3e-4' as a string; float() does not
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r} ({type(value).__name__}); quote it in YAML")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: cannot read {value!r} as {_type_name(tp)}")


def _from_dict(cls: type[T], data: dict, where: str = "") -> T:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key '{path}'" + closest(str(key), list(fields)))
        default = _section_default(fields[key])
        if default is not None and variants(hints[key]) is not None:
            if pick_variant(hints[key], value, default, path) is not type(default):
                default = None  # another variant: its own class defaults apply
        if isinstance(value, dict) and default is not None:
            # a partial section overrides the parent's own defaults for it, not the section class's
            value = _deep_merge(config_to_dict(default), value)
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def _section_default(f: dataclasses.Field) -> Any:
    """The default instance of a nested-dataclass field (from its default_factory), else None."""
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return value if dataclasses.is_dataclass(value) else None
    return f.default if dataclasses.is_dataclass(f.default) else None


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(cls: type[T], data: dict | None) -> T:
    """Build ``cls`` from a (partial) nested dict, strictly."""
    return _from_dict(cls, dict(data or {}))


def parse_override(text: str) -> tuple[list[str], str]:
    """``'--optim.lr=3e-4'`` -> (["optim", "lr"], "3e-4")."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise ConfigError(f"override {text!r} must look like --section.field=value")
    key, value = body.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    return key.replace("-", "_").split("."), value


def _apply_override(cls: type, data: dict, keys: list[str], raw: str) -> None:
    """Set ``data[k0][k1]... = raw`` after checking the path against the dataclass fields."""
    node, tp, where = data, cls, ""
    for i, k in enumerate(keys):
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"'{where}' is a value, not a section; cannot set '{'.'.join(keys)}'")
        names = [f.name for f in dataclasses.fields(tp) if f.init]
        where = f"{where}.{k}" if where else k
        if k not in names:
            raise ConfigError(f"unknown config key '{where}'" + closest(k, names))
        ftp = _hints(tp)[k]
        if variants(ftp) is not None:
            f = next(f for f in dataclasses.fields(tp) if f.name == k)
            ftp = pick_variant(ftp, node.get(k), _section_default(f), where)
            if i < len(keys) - 1 and keys[i + 1] != TAG:
                names = {f.name for f in dataclasses.fields(ftp)}
                if keys[i + 1] not in names:
                    others = [
                        t
                        for t, c in variants(_hints(tp)[k]).items()
                        if keys[i + 1] in {g.name for g in dataclasses.fields(c)}
                    ]
                    if others:
                        raise ConfigError(
                            f"'{where}.{keys[i + 1]}' belongs to {where}.{TAG}={' or '.join(others)}, not "
                            f"{where}.{TAG}={getattr(ftp, TAG)}; set --{where}.{TAG}={others[0]} first"
                        )
        if i == len(keys) - 1:
            if dataclasses.is_dataclass(ftp):
                raise ConfigError(f"'{where}' is a section; set one of its fields, e.g. --{where}.<field>=...")
            node[k] = _parse_scalar(raw, ftp)
        else:
            existing = node.get(k)
            if not isinstance(existing, dict):
                node[k] = existing = {}
            node, tp = existing, ftp


def _parse_scalar(raw: str, tp: Any) -> Any:
    """Command-line text -> a Python value; strings stay strings for str-typed fields."""
    if tp is str or tp is Path:
        return raw
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"config file {p} does not exist; pass --config with a path to a YAML file (examples under configs/)"
        )
    if p.is_dir():
        raise ConfigError(f"config file {p} is a directory; pass a YAML file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} cannot be read: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of ``cls`` <- YAML file at ``path`` <- ``overrides`` (``--a.b=c``), strictly checked."""
    data = read_yaml(path) if path else {}
    try:
        # Validate the file's keys before applying overrides so errors name the file.
        _from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    # a tagged-union section's variant is chosen before its fields are set, whatever the flag order
    parsed = [parse_override(ov) for ov in overrides]
    for keys, raw in sorted(parsed, key=lambda kr: kr[0][-1] != TAG):
        _apply_override(cls, data, keys, raw)
    return _from_dict(cls, data)


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML-able nested dict (tuples -> lists, paths -> strings)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def save_config(cfg: Any, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config to ``run_dir/config.yaml`` atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)
    return path


def config_diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Flattened differences between two config dicts: [(key, old, new)]."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
        key = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_diff(a, b, key + "."))
        elif a != b:
            out.append((key, a, b))
    return out
