"""DiffMean: an optimisation-free direction, the mean block-L residual on positive minus negative texts.

`masked_sum` is the one implementation: `diffmean_direction` applies it to one batch of positive and negative rows,
and the `axbench diffmean` stage (`prosv_jax.evaluation.diffmean`) accumulates it over many batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prosv_jax.models.decoder import Decoder, positions_from_valid


def masked_sum(model: Decoder, layer: int, tokens, valid, token_mask) -> tuple[jax.Array, jax.Array]:
    """(sum over the masked tokens of the block-`layer` residual [d] in float32, number of masked tokens)."""
    if not 0 <= layer < model.cfg.num_layers:
        raise ValueError(f"layer {layer} is out of range; the model has blocks 0..{model.cfg.num_layers - 1}")
    tokens, valid = jnp.asarray(tokens), jnp.asarray(valid, bool)
    hidden, _, _ = model.run_blocks(model.embed(tokens), positions_from_valid(valid), valid, stop=layer + 1)
    weights = (jnp.asarray(token_mask, bool) & valid).astype(jnp.float32)
    return jnp.einsum("bt,btd->d", weights, hidden.astype(jnp.float32)), weights.sum()


def diffmean_direction(model: Decoder, layer: int, tokens, valid, token_mask, positive) -> jax.Array:
    """Direction [d] over positive and negative sequences batched together: the mean of the masked residuals of the
    positive rows minus that of the negative rows (two `masked_sum` passes; only blocks 0..layer run).

    tokens, valid, token_mask: [B, T] (token_mask picks the tokens averaged, e.g. the responses); positive: [B] bool.
    """
    positive = jnp.asarray(positive, bool)
    if not bool(jnp.any(positive)) or bool(jnp.all(positive)):
        raise ValueError("DiffMean needs at least one positive and one negative sequence")
    mask = jnp.asarray(token_mask, bool)
    pos_sum, pos_n = masked_sum(model, layer, tokens, valid, mask & positive[:, None])
    neg_sum, neg_n = masked_sum(model, layer, tokens, valid, mask & ~positive[:, None])
    return pos_sum / jnp.maximum(pos_n, 1.0) - neg_sum / jnp.maximum(neg_n, 1.0)
