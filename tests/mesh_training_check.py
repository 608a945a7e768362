"""Trains one grid of 4 runs on one device and on 8-device meshes and prints a JSON summary of the differences.

Run by tests/test_mesh_training.py in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the
flag must be set before jax is imported; the rest of the suite runs on one device).
Usage: python mesh_training_check.py MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

from prosv_jax.interventions import Steering, SteeringVector, load_steering
from prosv_jax.models.loading import load_model
from prosv_jax.models.sharding import ShardingRules, make_mesh
from prosv_jax.training import trainer as trainer_lib
from prosv_jax.training.data import TrainDataset
from prosv_jax.training.optim import OptimConfig
from prosv_jax.training.step import StepConfig
from prosv_jax.training.trainer import RunSpec, TrainConfig, Trainer

STEERING = Steering.single(1, SteeringVector(beta=1.0, c=2.0), "f2+l2")
RUNS = [RunSpec("a", seed=1), RunSpec("b", seed=2, lrs=(("factor", 1.0),), init=(("beta", 2.0),)),
        RunSpec("c", seed=3, lrs=(("direction", 0.01),)), RunSpec("d", seed=4, init=(("c", 4.0),))]
# name -> (mesh shape or None, runs per program, objective). With 2 runs per program the 4 runs form two groups
# that must share one compiled program; 2 runs on data=4 do not divide it and are replicated.
CASES = {
    "one_device": (None, 2, "lang"),
    "one_device_simpo": (None, 2, "simpo"),
    "data2_fsdp2_tensor2": ({"data": 2, "fsdp": 2, "tensor": 2}, 2, "lang"),
    "data4_fsdp2": ({"data": 4, "fsdp": 2}, 2, "lang"),
    "data4_fsdp2_k4": ({"data": 4, "fsdp": 2}, 4, "lang"),
    "data2_fsdp2_tensor2_simpo": ({"data": 2, "fsdp": 2, "tensor": 2}, 2, "simpo"),
}
# One group of 4 runs is compared with two groups of 2 on one device: a run trains the same alone or vmapped.
REFERENCE = {"data2_fsdp2_tensor2": "one_device", "data4_fsdp2": "one_device", "data4_fsdp2_k4": "one_device",
             "data2_fsdp2_tensor2_simpo": "one_device_simpo"}


def examples(seed: int, n: int = 10):
    rng = np.random.RandomState(seed)
    return [(list(rng.randint(5, 300, rng.randint(3, 8))), list(rng.randint(5, 300, rng.randint(4, 12))))
            for _ in range(n)]


def train(model_dir: str, out: str, shape, runs_per_program: int, objective: str) -> dict:
    mesh = None if shape is None else make_mesh(shape)
    model = load_model(model_dir, mesh=mesh, rules=ShardingRules())
    negatives = examples(1) if objective == "simpo" else None
    datasets = {"default": TrainDataset.from_examples(examples(0), negatives)}
    programs, layout = [], {}
    original = trainer_lib.group_program
    original.cache_clear()  # each case counts its own compiles

    def recording(*args):
        tx, step = original(*args)
        programs.append(step)

        def step_recording_layout(model_state, state, lrs, data):
            out = step(model_state, state, lrs, data)
            layout.setdefault("state_in", spec(state.params["layer1"]["v"]))
            layout.setdefault("state_out", spec(out[0].params["layer1"]["v"]))
            layout.setdefault("lrs", spec(lrs["factor"]))
            layout.setdefault("tokens", spec(data.tokens))
            layout.setdefault("prefix", spec(data.prefix))
            return out

        return tx, step_recording_layout

    trainer_lib.group_program = recording
    try:
        trainer = Trainer(model, STEERING, datasets, out, OptimConfig(factor_lr=0.3, direction_lr=0.05),
                          StepConfig(objective=objective),
                          TrainConfig(epochs=2, batch_size=4, runs_per_program=runs_per_program, progress=False),
                          mesh=mesh)
        trainer.train(RUNS)
    finally:
        trainer_lib.group_program = original
    params = {}
    for run in RUNS:
        _, p, _ = load_steering(os.path.join(out, "runs", run.name))
        params[run.name] = {k: np.asarray(v, np.float64).ravel().tolist() for k, v in p["layer1"].items()}
    losses = {}
    for group in sorted(os.listdir(os.path.join(out, "groups"))):
        for line in open(os.path.join(out, "groups", group, "metrics.jsonl")):
            record = json.loads(line)
            losses.setdefault(record["run"], []).append(record["loss"])
    return dict(params=params, losses=losses, groups=len(programs), layout=layout,
                one_program=all(p is programs[0] for p in programs), compiles=programs[0]._cache_size())


def spec(array) -> list:
    """The array's PartitionSpec as a JSON list (one entry per dimension), or "single" off a mesh."""
    sharding = array.sharding
    if not hasattr(sharding, "spec"):
        return "single"
    entries = list(sharding.spec) + [None] * (array.ndim - len(sharding.spec))
    return [list(e) if isinstance(e, tuple) else e for e in entries]


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main(model_dir: str, out_dir: str) -> None:
    results = {name: train(model_dir, os.path.join(out_dir, name), *case) for name, case in CASES.items()}
    summary = {"devices": jax.device_count()}
    for name, reference in REFERENCE.items():
        got, want = results[name], results[reference]
        summary[name] = dict(
            groups=got["groups"], one_program=got["one_program"], compiles=got["compiles"], layout=got["layout"],
            params_max_rel=max(relative(got["params"][r][k], want["params"][r][k])
                               for r in want["params"] for k in want["params"][r]),
            params_max_abs=max(float(np.abs(np.subtract(got["params"][r][k], want["params"][r][k])).max())
                               for r in want["params"] for k in want["params"][r]),
            losses_max_rel=max(relative(got["losses"][r], want["losses"][r]) for r in want["losses"]),
            steps=sorted({len(v) for v in got["losses"].values()}),
            runs_differ=relative(want["params"]["a"]["v"], want["params"]["b"]["v"]))
    print(json.dumps(summary))


if __name__ == "__main__":
    main(*sys.argv[1:])
