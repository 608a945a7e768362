"""Sharded loading and forward on 8 simulated CPU devices (FSDP, tensor parallel, data parallel).

jax fixes its device count when first imported and the rest of the suite runs in-process on one device, so the
8-device part runs in a subprocess (tests/sharded_check.py) that prints a JSON summary; this file asserts on it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

import hf_models

SCRIPT = os.path.join(os.path.dirname(__file__), "sharded_check.py")
MODELS = ("gemma2_window", "llama_gqa_untied")  # tied + kv_heads=2 + head_dim 32; untied lm_head + head_dim 16
MESHES = {"dp_fsdp_tp": {"data": 2, "fsdp": 2, "tensor": 2}, "fsdp8": {"fsdp": 8}, "fsdp2_tp4": {"fsdp": 2, "tensor": 4}}

# Expected PartitionSpec per weight name and mesh, written out by hand (not computed with the library's rules).
# Vocabulary 320, d 64, heads 4, kv heads 2, MLP 96: everything divides, except 2 kv heads on tensor=4, which
# must be replicated along that axis.
_DP_FSDP_TP = {
    "embedding": ["tensor", "fsdp"], "lm_head": ["fsdp", "tensor"],
    "q": ["fsdp", "tensor", None], "k": ["fsdp", "tensor", None], "v": ["fsdp", "tensor", None],
    "o": ["tensor", None, "fsdp"], "gate": ["fsdp", "tensor"], "up": ["fsdp", "tensor"], "down": ["tensor", "fsdp"],
    "scale": [None],
}
EXPECTED_SPECS = {
    "dp_fsdp_tp": _DP_FSDP_TP,
    "fsdp8": {
        "embedding": [None, "fsdp"], "lm_head": ["fsdp", None],
        "q": ["fsdp", None, None], "k": ["fsdp", None, None], "v": ["fsdp", None, None],
        "o": [None, None, "fsdp"], "gate": ["fsdp", None], "up": ["fsdp", None], "down": [None, "fsdp"],
        "scale": [None],
    },
    "fsdp2_tp4": {**_DP_FSDP_TP, "k": ["fsdp", None, None], "v": ["fsdp", None, None]},
}
EXPECTED_BATCH_SPEC = {"dp_fsdp_tp": [["data", "fsdp"], None], "fsdp8": ["fsdp", None], "fsdp2_tp4": ["fsdp", None]}
BIG = ("embedding", "lm_head", "q", "o", "gate", "down")
SPREAD = {"dp_fsdp_tp": 4, "fsdp8": 8, "fsdp2_tp4": 8}  # big weights: 1/(fsdp x tensor) per device; data replicates


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    args = []
    for name in MODELS:
        directory = tmp_path_factory.mktemp(name)
        hf_models.build(name, directory, with_tokenizer=False, num_hidden_layers=2)  # 2 layers: faster compiles
        args.append(f"{name}={directory}")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"sharded_check.py failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mesh_size(entry, mesh: dict) -> int:
    axes = [] if entry is None else [entry] if isinstance(entry, str) else entry
    return math.prod(mesh[a] for a in axes)


@pytest.mark.parametrize("name", MODELS)
def test_subprocess_sees_8_devices(summary, name):
    assert summary[name]["devices"] == 8
    assert summary[name]["reference_std"] > 0.3, "reference logits too flat for the comparison to mean anything"


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("name", MODELS)
def test_sharded_logits_match_unsharded(summary, name, mesh_name):
    result = summary[name]["meshes"][mesh_name]
    assert result["max_abs_diff"] <= 1e-5
    assert result["batch_sharded_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("name", MODELS)
def test_steered_forward_and_grad_on_a_mesh_match_one_device(summary, name, mesh_name):
    result = summary[name]["meshes"][mesh_name]
    assert result["steered_loss_diff"] <= 1e-5
    assert result["steered_grad_max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("name", MODELS)
def test_batch_input_is_sharded(summary, name, mesh_name):
    result, mesh = summary[name]["meshes"][mesh_name], MESHES[mesh_name]
    assert result["batch_spec"] == EXPECTED_BATCH_SPEC[mesh_name]
    rows = 8 // _mesh_size(EXPECTED_BATCH_SPEC[mesh_name][0], mesh)
    assert result["batch_shard_shapes"] == [[rows, 12]]


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("name", MODELS)
def test_weights_are_spread_as_specified(summary, name, mesh_name):
    weights, mesh = summary[name]["meshes"][mesh_name]["weights"], MESHES[mesh_name]
    expected_specs = EXPECTED_SPECS[mesh_name]
    seen = set()
    for path, info in weights.items():
        weight = path.split("/")[-1]
        seen.add(weight)
        spec = expected_specs[weight]
        assert info["spec"] == spec, f"{path}: spec {info['spec']}, expected {spec}"
        assert info["devices"] == 8, f"{path} is not on every device"
        divisors = [_mesh_size(entry, mesh) for entry in spec]
        shard = [size // d for size, d in zip(info["shape"], divisors)]
        assert info["shard_shapes"] == [shard], f"{path}: shards {info['shard_shapes']}, expected {shard}"
        assert info["distinct_blocks"] == math.prod(divisors), path
        if weight in BIG:  # really split: each device holds a fraction of the weight
            assert math.prod(shard) * SPREAD[mesh_name] == math.prod(info["shape"]), \
                f"{path} is not spread: {shard} of {info['shape']}"
    expected_weights = {"embedding", "q", "k", "v", "o", "gate", "up", "down", "scale"}
    if name == "llama_gqa_untied":
        expected_weights.add("lm_head")
    assert seen == expected_weights


@pytest.mark.parametrize("name", MODELS)
def test_indivisible_kv_heads_are_replicated_on_tensor(summary, name):
    """2 kv heads on tensor=4: k and v keep both heads on every device and are split over fsdp only."""
    k = summary[name]["meshes"]["fsdp2_tp4"]["weights"]["layers/0/attn/k"]
    q = summary[name]["meshes"]["fsdp2_tp4"]["weights"]["layers/0/attn/q"]
    assert k["shape"][1] == 2 and k["shard_shapes"] == [[32, 2, k["shape"][2]]]
    assert q["shard_shapes"] == [[32, 1, q["shape"][2]]]  # 4 query heads do split 4 ways
