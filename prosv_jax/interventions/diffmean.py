"""DiffMean: an optimisation-free direction, the mean block-L residual on positive minus negative texts.

`diffmean_direction` does it in one batch; `masked_sum` lets a caller accumulate the two means over many batches
(the `axbench diffmean` stage, `prosv_jax.evaluation.diffmean`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prosv_jax.models.decoder import Decoder, positions_from_valid


@jax.jit
def _masked_means(hidden: jax.Array, token_mask: jax.Array, positive: jax.Array) -> jax.Array:
    weights = token_mask.astype(jnp.float32)
    pos = weights * positive[:, None]  # [B, T]
    neg = weights * (~positive)[:, None]
    total = lambda w: jnp.einsum("bt,btd->d", w, hidden.astype(jnp.float32)) / jnp.maximum(w.sum(), 1.0)  # noqa
    return total(pos) - total(neg)


def masked_sum(model: Decoder, layer: int, tokens, valid, token_mask) -> tuple[jax.Array, jax.Array]:
    """(sum over the masked tokens of the block-`layer` residual [d] in float32, number of masked tokens)."""
    if not 0 <= layer < model.cfg.num_layers:
        raise ValueError(f"layer {layer} is out of range; the model has blocks 0..{model.cfg.num_layers - 1}")
    tokens, valid = jnp.asarray(tokens), jnp.asarray(valid, bool)
    hidden, _, _ = model.run_blocks(model.embed(tokens), positions_from_valid(valid), valid, stop=layer + 1)
    weights = (jnp.asarray(token_mask, bool) & valid).astype(jnp.float32)
    return jnp.einsum("bt,btd->d", weights, hidden.astype(jnp.float32)), weights.sum()


def diffmean_direction(model: Decoder, layer: int, tokens, valid, token_mask, positive) -> jax.Array:
    """Direction [d] from one forward pass over positive and negative sequences batched together.

    tokens, valid, token_mask: [B, T] (token_mask picks the tokens averaged, e.g. the responses); positive: [B]
    bool. Only blocks 0..layer run.
    """
    positive = jnp.asarray(positive, bool)
    token_mask = jnp.asarray(token_mask, bool) & jnp.asarray(valid, bool)
    if not bool(jnp.any(positive)) or bool(jnp.all(positive)):
        raise ValueError("DiffMean needs at least one positive and one negative sequence")
    if not 0 <= layer < model.cfg.num_layers:
        raise ValueError(f"layer {layer} is out of range; the model has blocks 0..{model.cfg.num_layers - 1}")
    tokens, valid = jnp.asarray(tokens), jnp.asarray(valid, bool)
    hidden, _, _ = model.run_blocks(model.embed(tokens), positions_from_valid(valid), valid, stop=layer + 1)
    return _masked_means(hidden, token_mask, positive)
