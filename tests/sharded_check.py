"""Loads tiny models unsharded and sharded on 8 simulated CPU devices and prints a JSON summary.

Run by tests/test_sharding.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must be set before jax is imported, and the rest of
the test suite runs with one device). Usage: python sharded_check.py NAME=MODEL_DIR [NAME=MODEL_DIR ...]
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prosv_jax.interventions import Steering, SteeringVector, steered_forward
from prosv_jax.models.decoder import positions_from_valid
from prosv_jax.models.loading import load_model
from prosv_jax.models.sharding import ShardingRules, batch_sharding, make_mesh

MESHES = {"dp_fsdp_tp": {"data": 2, "fsdp": 2, "tensor": 2}, "fsdp8": {"fsdp": 8}, "fsdp2_tp4": {"fsdp": 2, "tensor": 4}}
LENGTHS = (12, 7, 3, 12, 1, 9, 5, 10)  # 8 rows: the batch divides every mesh's batch axes
RULES = ShardingRules()


@nnx.jit
def forward(model, tokens, positions, valid):
    return model(tokens, positions, valid).logits


STEERING = Steering.single(1, SteeringVector(beta=2.0, c=4.0), "f2+l2")


@jax.jit
def steered_loss_and_grad(model, params, tokens, valid):
    """Mean steered logit and its gradient w.r.t. the steering params (the weights are not differentiated)."""
    loss = lambda p: steered_forward(STEERING)(model, p, tokens, valid, valid).logits.mean()  # noqa: E731
    return jax.value_and_grad(loss)(params)


def padded_batch(vocab: int):
    rng = np.random.RandomState(0)
    width = max(LENGTHS)
    tokens = rng.randint(5, vocab, (len(LENGTHS), width)).astype(np.int32)
    valid = np.zeros((len(LENGTHS), width), bool)
    for row, n in enumerate(LENGTHS):
        valid[row, width - n:] = True
    positions = np.asarray(positions_from_valid(jnp.asarray(valid)))
    return tokens, valid, positions


def spec_json(spec, ndim: int) -> list:
    entries = list(spec) + [None] * (ndim - len(spec))
    return [list(e) if isinstance(e, tuple) else e for e in entries]


def weights_summary(model) -> dict:
    out = {}
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        array = variable[...]
        shards = array.addressable_shards
        out["/".join(map(str, path))] = dict(
            shape=list(array.shape),
            spec=spec_json(array.sharding.spec, array.ndim),
            shard_shapes=sorted({tuple(s.data.shape) for s in shards}),
            devices=len({s.device for s in shards}),
            distinct_blocks=len({str(s.index) for s in shards}),
        )
    return out


def check(model_dir: str) -> dict:
    result = {"devices": jax.device_count(), "meshes": {}}
    reference_model = load_model(model_dir, jnp.float32)
    tokens, valid, positions = padded_batch(reference_model.cfg.vocab_size)
    reference = np.asarray(forward(reference_model, tokens, positions, valid))
    result["reference_std"] = float(reference[valid].std())
    params = STEERING.init_params(jax.random.key(0), reference_model.cfg)
    ref_loss, ref_grad = steered_loss_and_grad(reference_model, params, tokens, valid)
    for mesh_name, shape in MESHES.items():
        mesh = make_mesh(shape)
        model = load_model(model_dir, jnp.float32, mesh=mesh, rules=RULES)
        logits = np.asarray(forward(model, tokens, positions, valid))
        sharding = batch_sharding(mesh, RULES, 2, tokens.shape[0])
        placed = [jax.device_put(x, sharding) for x in (tokens, positions, valid)]
        batch_logits = np.asarray(forward(model, *placed))
        loss, grad = steered_loss_and_grad(model, params, placed[0], placed[2])
        result["meshes"][mesh_name] = dict(
            mesh=shape,
            max_abs_diff=float(np.abs(logits - reference)[valid].max()),
            batch_sharded_max_abs_diff=float(np.abs(batch_logits - reference)[valid].max()),
            steered_loss_diff=abs(float(loss) - float(ref_loss)),
            steered_grad_max_abs_diff=max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
                jax.tree.leaves(grad), jax.tree.leaves(ref_grad))),
            batch_spec=spec_json(placed[0].sharding.spec, 2),
            batch_shard_shapes=sorted({tuple(s.data.shape) for s in placed[0].addressable_shards}),
            weights=weights_summary(model),
        )
    return result


def main(argv: list[str]) -> None:
    summary = {}
    for arg in argv:
        name, model_dir = arg.split("=", 1)
        summary[name] = check(model_dir)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
