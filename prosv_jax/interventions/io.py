"""Saving and loading a trained steering: `steering.json` (spec and model) + `params.safetensors` (the numbers).

The two files are written as a pair: into a staging folder that then replaces the steering folder, so a kill never
leaves a new spec beside old numbers (or the reverse). Loading checks the steering against the model it is applied
to and refuses a model of another family, width or depth; a corrupt or incomplete `steering.json` is an error that
names the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import numpy as np

from prosv_jax.files import replace_atomically, write_json
from prosv_jax.interventions.kinds import kind_from_dict, kind_to_dict
from prosv_jax.interventions.transform import Site, Steering, SteeringParams
from prosv_jax.models.config import ModelConfig

SPEC_FILE = "steering.json"
PARAMS_FILE = "params.safetensors"
FORMAT_VERSION = 1


def save_steering(directory: str | os.PathLike, steering: Steering, params: SteeringParams, cfg: ModelConfig,
                  info: dict | None = None) -> None:
    """Writes the steering, its params and the shape of the model it was trained for; `info` is free metadata."""
    from safetensors.numpy import save_file

    directory = os.path.abspath(os.fspath(directory))
    flat = {f"{site}/{name}": np.asarray(jax.device_get(value)) for site, p in params.items()
            for name, value in p.items()}
    spec = {
        "format_version": FORMAT_VERSION,
        "sites": [{"name": s.name, "layer": s.layer, "positions": str(s.positions), "kind": kind_to_dict(s.kind)}
                  for s in steering.sites],
        "model": {"family": cfg.family, "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers},
        "info": info or {},
    }
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}-", dir=os.path.dirname(directory))
    os.chmod(staging, 0o755)  # mkdtemp's 0o700 would stay on the renamed folder
    try:
        if os.path.isdir(directory):  # keep whatever else the folder holds
            for name in os.listdir(directory):
                if name not in (SPEC_FILE, PARAMS_FILE):
                    _copy(os.path.join(directory, name), os.path.join(staging, name))
        replace_atomically(os.path.join(staging, PARAMS_FILE), lambda path: save_file(flat, path))
        write_json(os.path.join(staging, SPEC_FILE), spec)
        _swap_in(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy(src: str, dst: str) -> None:
    (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)


def _swap_in(staging: str, directory: str) -> None:
    """Renames `staging` to `directory`, moving an old `directory` aside first and deleting it after."""
    old = None
    if os.path.exists(directory):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}-old-", dir=os.path.dirname(directory))
        os.rmdir(old)
        os.rename(directory, old)
    os.rename(staging, directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


MODEL_FIELDS = ("family", "hidden_size", "num_layers")


def check_compatible(model_spec: dict, cfg: ModelConfig, where: str) -> None:
    for field, have in (("family", cfg.family), ("hidden_size", cfg.hidden_size), ("num_layers", cfg.num_layers)):
        if model_spec[field] != have:
            raise ValueError(f"{where} was trained for a model with {field}={model_spec[field]}, but this model has "
                             f"{field}={have}; apply it to the model it was trained for")


def load_steering(directory: str | os.PathLike, cfg: ModelConfig | None = None
                  ) -> tuple[Steering, SteeringParams, dict]:
    """(steering, params, spec dict); with `cfg`, refuses a model of another width or layer count."""
    from safetensors.numpy import load_file

    directory = os.fspath(directory)
    spec_path, params_path = os.path.join(directory, SPEC_FILE), os.path.join(directory, PARAMS_FILE)
    for path in (spec_path, params_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: a saved steering is a folder with {SPEC_FILE} and "
                                    f"{PARAMS_FILE}")
    spec = _read_spec(spec_path)
    try:
        steering = Steering(tuple(Site(s["layer"], kind_from_dict(s["kind"]), s["positions"], s["name"])
                                  for s in spec["sites"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{spec_path}: a site lacks a field or has a wrong type ({type(e).__name__}: {e}); each "
                         "site needs name, layer, positions and kind: save the steering again") from None
    if cfg is not None:
        check_compatible(spec["model"], cfg, f"the steering in {directory}")
        steering.validate(cfg)
    params: SteeringParams = {}
    for key, value in load_file(params_path).items():
        site, name = key.split("/", 1)
        params.setdefault(site, {})[name] = jax.numpy.asarray(value)
    missing = sorted({s.name for s in steering.sites} - set(params))
    if missing:
        raise ValueError(f"{params_path} has no parameters for site(s) {missing}")
    return steering, params, spec


def _read_spec(spec_path: str) -> dict:
    """steering.json, checked for the fields loading needs (errors name the file)."""
    try:
        with open(spec_path, encoding="utf-8") as f:
            spec = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{spec_path} is not valid JSON ({e}): save the steering again") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path} must hold a JSON object, got a {type(spec).__name__}")
    if spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{spec_path}: format_version {spec.get('format_version')} is not {FORMAT_VERSION}")
    model = spec.get("model")
    missing = [k for k in ("sites", "model") if k not in spec] or [
        f"model.{k}" for k in MODEL_FIELDS if not isinstance(model, dict) or k not in model]
    if missing or not isinstance(spec["sites"], list):
        raise ValueError(f"{spec_path} lacks {missing or ['a list of sites']}: it was not written by save_steering; "
                         "save the steering again")
    return spec
