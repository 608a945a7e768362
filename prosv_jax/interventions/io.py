"""Saving and loading a trained steering: `steering.json` (spec and model) + `params.safetensors` (the numbers).

Loading checks the steering against the model it is applied to and refuses a model of another width or depth.
"""

from __future__ import annotations

import json
import os

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

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    flat = {f"{site}/{name}": np.asarray(jax.device_get(value)) for site, p in params.items()
            for name, value in p.items()}
    spec = {
        "format_version": FORMAT_VERSION,
        "sites": [{"name": s.name, "layer": s.layer, "positions": str(s.positions), "kind": kind_to_dict(s.kind)}
                  for s in steering.sites],
        "model": {"family": cfg.family, "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers},
        "info": info or {},
    }
    replace_atomically(os.path.join(directory, PARAMS_FILE), lambda path: save_file(flat, path))
    write_json(os.path.join(directory, SPEC_FILE), spec)


def check_compatible(model_spec: dict, cfg: ModelConfig, where: str) -> None:
    for field, have in (("hidden_size", cfg.hidden_size), ("num_layers", cfg.num_layers)):
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
    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{spec_path}: format_version {spec.get('format_version')} is not {FORMAT_VERSION}")
    steering = Steering(tuple(Site(s["layer"], kind_from_dict(s["kind"]), s["positions"], s["name"])
                              for s in spec["sites"]))
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
