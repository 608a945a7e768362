"""Intervention types: pure functions of (params, hidden, mask), each with its initialiser.

- `SteeringVector`: h + alpha * v with one scalar factor alpha and a free direction v (method.md section 1-2);
  `unit_norm` renormalises v, `train_factor=False` freezes alpha (the fixed-factor SV, its factor set at
  inference); DiffMean is a frozen-factor SV whose direction comes from `diffmean.diffmean_direction`.
- `LoReFT`: h + R^T (W h + b - R h) with orthonormal rows of R (rank r).

Shapes: hidden [B, T, d], mask [B, T] (True where the edit applies).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]


def _masked_add(hidden: jax.Array, edit: jax.Array, mask: jax.Array) -> jax.Array:
    """hidden + edit where mask is True, computed in the edit's dtype and rounded to the hidden dtype."""
    return jnp.where(mask[..., None], (hidden + edit).astype(hidden.dtype), hidden)


@dataclasses.dataclass(frozen=True)
class SteeringVector:
    """One factor alpha and one direction v at a hook site.

    Initialisation (reference code): alpha_0 = beta * sqrt(n); v ~ Uniform(-c/sqrt(n), c/sqrt(n)) (`init="uniform"`)
    or v ~ Normal(0, lam / n) (`init="normal"`, the paper's form).
    """

    name: ClassVar[str] = "steering_vector"
    beta: float = 2.0
    c: float = 1.0
    lam: float = 1.0
    init: str = "uniform"
    unit_norm: bool = False
    train_factor: bool = True

    def __post_init__(self):
        if self.init not in ("uniform", "normal"):
            raise ValueError(f"SteeringVector init must be 'uniform' or 'normal', got {self.init!r}")

    def init_params(self, key: jax.Array, hidden_size: int, dtype=jnp.float32) -> Params:
        n = hidden_size
        if self.init == "uniform":
            bound = self.c / math.sqrt(n)
            v = jax.random.uniform(key, (n,), jnp.float32, -bound, bound)
        else:
            v = jax.random.normal(key, (n,), jnp.float32) * math.sqrt(self.lam / n)
        return {"alpha": jnp.asarray(self.beta * math.sqrt(n), dtype), "v": v.astype(dtype)}

    def direction(self, params: Params) -> jax.Array:
        v = params["v"]
        if self.unit_norm:
            v = v / jnp.linalg.norm(v.astype(jnp.float32)).astype(v.dtype)
        return v

    def apply(self, params: Params, hidden: jax.Array, mask: jax.Array) -> jax.Array:
        return _masked_add(hidden, params["alpha"] * self.direction(params), mask)

    def frozen(self) -> tuple[str, ...]:
        """Parameters the optimiser must leave alone."""
        return () if self.train_factor else ("alpha",)


@dataclasses.dataclass(frozen=True)
class LoReFT:
    """Low-rank representation finetuning: edits h inside the span of R's r orthonormal rows."""

    name: ClassVar[str] = "loreft"
    rank: int = 4
    init_std: float = 0.02

    def init_params(self, key: jax.Array, hidden_size: int, dtype=jnp.float32) -> Params:
        if not 0 < self.rank <= hidden_size:
            raise ValueError(f"LoReFT rank must be in 1..{hidden_size}, got {self.rank}")
        k_rot, k_w = jax.random.split(key)
        q, _ = jnp.linalg.qr(jax.random.normal(k_rot, (hidden_size, self.rank), jnp.float32))  # [d, r]
        return {"R": q.T.astype(dtype),
                "W": (self.init_std * jax.random.normal(k_w, (self.rank, hidden_size))).astype(dtype),
                "b": jnp.zeros((self.rank,), dtype)}

    @staticmethod
    def orthonormal_rows(R: jax.Array) -> jax.Array:
        """R [r, d] with orthonormal rows (QR with a sign fix, differentiable); identity on orthonormal input."""
        q, upper = jnp.linalg.qr(R.astype(jnp.float32).T)  # q [d, r]
        return (q * jnp.sign(jnp.diagonal(upper))[None, :]).T.astype(R.dtype)

    def apply(self, params: Params, hidden: jax.Array, mask: jax.Array) -> jax.Array:
        R = self.orthonormal_rows(params["R"])
        W, b = params["W"], params["b"]
        source = jnp.einsum("btd,rd->btr", hidden, W, preferred_element_type=jnp.float32) + b  # [B, T, r]
        rotated = jnp.einsum("btd,rd->btr", hidden, R, preferred_element_type=jnp.float32)  # [B, T, r]
        edit = jnp.einsum("btr,rd->btd", source - rotated, R.astype(jnp.float32))  # [B, T, d]
        return _masked_add(hidden, edit, mask)

    def frozen(self) -> tuple[str, ...]:
        return ()


KINDS: dict[str, Any] = {SteeringVector.name: SteeringVector, LoReFT.name: LoReFT}


def kind_to_dict(kind) -> dict:
    return {"type": kind.name, **dataclasses.asdict(kind)}


def kind_from_dict(data: dict):
    data = dict(data)
    kind_type = data.pop("type", None)
    if kind_type not in KINDS:
        raise ValueError(f"unknown intervention type {kind_type!r}; known: {sorted(KINDS)}")
    fields = {f.name for f in dataclasses.fields(KINDS[kind_type])}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for intervention type {kind_type!r}; known: {sorted(fields)}")
    return KINDS[kind_type](**data)
