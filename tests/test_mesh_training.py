"""The many-runs trainer on 8 simulated CPU devices: meshes train the same grid as one device, compiling once.

jax fixes its device count when first imported and the rest of the suite runs on one device, so the 8-device part
runs in a subprocess (tests/mesh_training_check.py) that prints a JSON summary; this file asserts on it.
Grid: 4 runs (different seeds, inits, learning rates), 6 steps each, from the cached prefix, Gemma-2-shaped model
(tied head, soft-caps, sliding window). Meshes: {data 2, fsdp 2, tensor 2} (2 groups of 2 runs; Lang and SimPO),
{data 4, fsdp 2} with groups of 2 runs (which do not divide data=4: replicated) and with one group of 4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import hf_models

SCRIPT = os.path.join(os.path.dirname(__file__), "mesh_training_check.py")
MESH_CASES = ("data2_fsdp2_tensor2", "data4_fsdp2", "data4_fsdp2_k4", "data2_fsdp2_tensor2_simpo")
SHARDED = ("data2_fsdp2_tensor2", "data4_fsdp2_k4", "data2_fsdp2_tensor2_simpo")  # runs divide the data axis


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gemma2")
    hf_models.build("gemma2_window", directory, with_tokenizer=False, num_hidden_layers=3)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = tmp_path_factory.mktemp("mesh_out")
    proc = subprocess.run([sys.executable, SCRIPT, str(directory), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"mesh_training_check.py failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_subprocess_sees_8_devices(summary):
    assert summary["devices"] == 8


@pytest.mark.parametrize("case", MESH_CASES)
def test_a_grid_on_a_mesh_ends_where_it_ends_on_one_device(summary, case):
    result = summary[case]
    assert result["steps"] == [6]
    assert result["params_max_rel"] <= 1e-5, result  # max |mesh - one device| / max |one device|, per leaf
    assert result["losses_max_rel"] <= 1e-5, result
    assert result["runs_differ"] > 0.1  # the runs of the grid really are different runs


@pytest.mark.parametrize("case", MESH_CASES)
def test_a_grid_on_a_mesh_compiles_its_step_once(summary, case):
    result = summary[case]
    assert result["one_program"] and result["compiles"] == 1, result
    assert result["groups"] == (1 if case.endswith("_k4") else 2)


@pytest.mark.parametrize("case", SHARDED)
def test_runs_are_split_over_data_and_batches_over_the_rest(summary, case):
    layout = summary[case]["layout"]
    assert layout["state_in"] == layout["state_out"] == ["data", None]  # params [K, d]: K over data
    assert layout["lrs"] == ["data"]
    assert layout["tokens"] == ["data", "fsdp", None]  # [K, B, T]: the batch over what data leaves (fsdp)
    assert layout["prefix"] == ["data", "fsdp", None, None]


def test_runs_that_do_not_divide_the_data_axis_are_replicated(summary):
    layout = summary["data4_fsdp2"]["layout"]  # 2 runs on data=4; a batch of 4 on data x fsdp = 8
    assert layout["state_in"] == layout["state_out"] == [None, None]
    assert layout["tokens"] == [None, None, None]


def test_the_train_config_asks_for_a_mesh_this_process_can_hold():
    """In this (one-device) process: all sizes 1 = no mesh; more devices than there are, or a size 0, are refused."""
    from prosv_jax.commands.train import check_config, make_train_mesh
    from prosv_jax.config import resolve

    config = resolve(os.path.join(os.path.dirname(__file__), "..", "experiments", "configs", "tiny_prosv.py"))
    assert dict(config.mesh) == {"data": 1, "fsdp": 1, "tensor": 1} and make_train_mesh(config) is None
    config.mesh.fsdp = 2
    with pytest.raises(ValueError, match=r"needs 2 devices; this process has 1"):
        make_train_mesh(config)
    config.mesh.fsdp = 0
    with pytest.raises(ValueError, match="mesh.fsdp must be a positive integer"):
        check_config(config)
