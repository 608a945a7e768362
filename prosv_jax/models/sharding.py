"""Logical-axis sharding: each weight names its axes logically; one rules table maps them onto mesh axes.

The same model code runs unsharded, FSDP (weights split over "fsdp"), tensor-parallel (heads, MLP width and
vocabulary over "tensor") or both, by changing the mesh and the rules only. A logical axis whose size the mesh axis
does not divide is replicated rather than refused (for example 1 key/value head on 2 tensor shards).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical axes of each weight, by the weight's own name (the last element of its path in the model state).
WEIGHT_AXES: dict[str, tuple[str, ...]] = {
    "embedding": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "q": ("embed", "heads", "head_dim"),
    "k": ("embed", "kv_heads", "head_dim"),
    "v": ("embed", "kv_heads", "head_dim"),
    "o": ("heads", "head_dim", "embed"),
    "q_bias": ("heads", "head_dim"),
    "k_bias": ("kv_heads", "head_dim"),
    "v_bias": ("kv_heads", "head_dim"),
    "o_bias": ("norm",),
    "gate": ("embed", "mlp"),
    "up": ("embed", "mlp"),
    "down": ("mlp", "embed"),
    "scale": ("norm",),
}


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis -> mesh axis (or tuple of mesh axes, or None for replicated)."""

    vocab: str | tuple | None = "tensor"
    embed: str | tuple | None = "fsdp"
    heads: str | tuple | None = "tensor"
    kv_heads: str | tuple | None = "tensor"
    head_dim: str | tuple | None = None
    mlp: str | tuple | None = "tensor"
    norm: str | tuple | None = None
    batch: str | tuple | None = ("data", "fsdp")
    runs: str | tuple | None = "data"  # the leading axis of many steering runs trained at once

    def mesh_axes(self, logical: str):
        if not hasattr(self, logical):
            raise ValueError(f"unknown logical axis {logical!r}; known: {[f.name for f in dataclasses.fields(self)]}")
        return getattr(self, logical)


def make_mesh(shape: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh from {axis name: size}, e.g. {"data": 2, "fsdp": 2, "tensor": 2}; sizes must multiply to #devices."""
    devices = list(jax.devices() if devices is None else devices)
    size = int(np.prod(list(shape.values())))
    if size != len(devices):
        raise ValueError(f"mesh {shape} needs {size} devices, {len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(tuple(shape.values())), tuple(shape))


def partition_spec(logical_axes: Sequence[str], shape: Sequence[int], mesh: Mesh, rules: ShardingRules) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dims carry `logical_axes`; indivisible dims are replicated."""
    spec, used = [], set()
    for logical, size in zip(logical_axes, shape):
        axes = rules.mesh_axes(logical)
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a in mesh.shape and a not in used and mesh.shape[a] > 1)
        shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or size % shards:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def weight_sharding(name: str, shape: Sequence[int], mesh: Mesh | None, rules: ShardingRules) -> jax.sharding.Sharding:
    """Where weight `name` of `shape` lives: on the mesh by the rules, or on the default device without one."""
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if name not in WEIGHT_AXES:
        raise KeyError(f"no logical axes known for weight {name!r}; add it to WEIGHT_AXES")
    return NamedSharding(mesh, partition_spec(WEIGHT_AXES[name], shape, mesh, rules))


def batch_sharding(mesh: Mesh, rules: ShardingRules, ndim: int, batch_size: int) -> NamedSharding:
    """Sharding of a [B, ...] input: batch over the data axes, the rest replicated."""
    return NamedSharding(mesh, partition_spec(("batch",) + ("norm",) * (ndim - 1), (batch_size,) + (1,) * (ndim - 1),
                                              mesh, rules))
