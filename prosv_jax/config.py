"""Experiment configs: ml-collections `get_config()` files, `--config.a.b=value` overrides, saving.

A config file is a Python file exposing `get_config() -> ml_collections.ConfigDict`; while it loads, its own folder
is importable, so configs can share a `base.py` (`from base import get_config as base_config`). Overrides keep the
field's type: the text is parsed as a Python literal (`[1, 2]`, `1e-3`, `None`, `true`), a str field takes the
text as it is, and ml-collections' own typing converts (int -> float, list <-> tuple) or refuses.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from typing import Sequence

import ml_collections

CONFIG_JSON = "config.json"
CONFIG_TEXT = "config.txt"


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Runs the config file's `get_config()`; its folder is on sys.path meanwhile (for a shared base.py)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found")
    folder = os.path.dirname(path)
    before = set(sys.modules)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(f"_prosv_config_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"config file {path} defines no get_config()")
        config = module.get_config()
    finally:
        sys.path.remove(folder)
        for name in set(sys.modules) - before:  # siblings such as base.py: never cached across config folders
            if (getattr(sys.modules[name], "__file__", None) or "").startswith(folder + os.sep):
                del sys.modules[name]
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"{path}: get_config() must return an ml_collections.ConfigDict, got {type(config).__name__}")
    return config


def parse_value(text: str, current):
    """The override text as a value for a field whose current value is `current`."""
    if isinstance(current, str):
        return text
    if isinstance(current, bool) and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text


def set_field(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Sets config.<dotted> from override text, with a clear error for unknown fields and wrong types."""
    parts = dotted.split(".")
    node, where = config, "config"
    for i, key in enumerate(parts):
        fields = sorted(node.keys())
        if key not in fields:
            raise ValueError(f"unknown config field {'.'.join(parts[:i + 1])!r}: {where} has fields {fields}")
        if i < len(parts) - 1:
            node, where = node[key], f"config.{'.'.join(parts[:i + 1])}"
            if not isinstance(node, ml_collections.ConfigDict):
                raise ValueError(f"config field {where!r} is a {type(node).__name__}, not a group of fields")
    key, current = parts[-1], node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise ValueError(f"config field {dotted!r} is a group: set its fields, one of {sorted(current.keys())}")
    value = parse_value(text, current)
    if isinstance(current, (list, tuple)) and not isinstance(value, (list, tuple)):
        raise ValueError(f"config field {dotted!r} is a list: give one like [1, 2], got {text!r}")
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ValueError(f"config field {dotted!r} is a bool: give true or false, got {text!r}")
    try:
        setattr(node, key, value)
    except TypeError as error:
        raise ValueError(f"config field {dotted!r} holds a {type(current).__name__} ({current!r}); "
                         f"{text!r} cannot be converted to it") from error


def split_override(arg: str) -> tuple[str, str]:
    """'--config.a.b=v' or 'a.b=v' -> ('a.b', 'v')."""
    body = arg[len("--config."):] if arg.startswith("--config.") else arg
    if "=" not in body:
        raise ValueError(f"override {arg!r} must look like --config.field=value")
    key, value = body.split("=", 1)
    return key, value


def resolve(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config of `path` with overrides ('--config.a.b=value' or 'a.b=value') applied in order."""
    config = load_config_file(path)
    for arg in overrides:
        set_field(config, *split_override(arg))
    return config


def to_dict(config: ml_collections.ConfigDict) -> dict:
    """A JSON-ready plain dict (tuples as lists)."""
    return json.loads(config.to_json())


def config_text(config: ml_collections.ConfigDict) -> str:
    """The config as plain YAML, sorted by field (what commands print and save as config.txt)."""
    import yaml

    return yaml.safe_dump(to_dict(config), sort_keys=True, default_flow_style=None, width=120).rstrip()


def save_config(config: ml_collections.ConfigDict, directory: str | os.PathLike) -> str:
    """Writes `config.json` and the readable `config.txt` into `directory`; returns the JSON path."""
    from prosv_jax.files import write_atomic, write_json

    directory = os.fspath(directory)
    path = os.path.join(directory, CONFIG_JSON)
    write_json(path, to_dict(config))
    write_atomic(os.path.join(directory, CONFIG_TEXT), config_text(config) + "\n")
    return path


def diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dicts."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names
