"""Packed rows: several examples share one row of tokens, told apart by a segment id per token.

`segments` [B, T] int32 holds 0 on padding and k >= 1 on the tokens of the row's k-th example; an example's tokens
are contiguous. Attention stays within a segment, positions restart at each segment's first token, and position
specs count prompt tokens per segment, so a packed row computes exactly what its examples compute unpacked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_bounds(segments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(first slot, last slot) [B, T] of the segment each slot belongs to (padding runs count as segments too)."""
    T = segments.shape[-1]
    index = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), segments.shape)  # [B, T]
    changes = segments[:, 1:] != segments[:, :-1]  # [B, T-1]: a new segment starts at t+1
    opens = jnp.concatenate([jnp.ones_like(changes[:, :1]), changes], axis=1)  # [B, T]
    closes = jnp.concatenate([changes, jnp.ones_like(changes[:, :1])], axis=1)  # [B, T]
    first = jax.lax.cummax(jnp.where(opens, index, 0), axis=1)
    last = jax.lax.cummin(jnp.where(closes, index, T - 1), axis=1, reverse=True)
    return first, last


def positions_from_segments(segments: jax.Array) -> jax.Array:
    """Positions [B, T] counting from 0 at each segment's first token (padding gets 0)."""
    first, _ = segment_bounds(segments)
    index = jnp.arange(segments.shape[-1], dtype=jnp.int32)
    return jnp.where(segments > 0, index - first, 0)


def within_segment(values: jax.Array, segments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(running count up to and including each slot, total) [B, T] of int `values` within each slot's segment."""
    first, last = segment_bounds(segments)
    running = jnp.cumsum(values, axis=-1)  # [B, T]
    before = jnp.take_along_axis(running - values, first, axis=-1)  # [B, T]: the count before the segment
    return running - before, jnp.take_along_axis(running, last, axis=-1) - before
