"""Losses on response tokens: Lang (cross-entropy) and scaled SimPO / RePS (method.md section 3).

Log-probabilities are computed at the response positions only, with the LM head applied in vocabulary chunks
(running log-sum-exp), so full-vocabulary logits are never materialised for every position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prosv_jax.models.decoder import Decoder

F32 = jnp.float32


def token_logprobs(model: Decoder, hidden: jax.Array, target_index: jax.Array, target_ids: jax.Array,
                   vocab_chunk: int = 8192) -> jax.Array:
    """log p(target_ids) [B, R] from residuals hidden [B, T, d] at positions target_index [B, R]."""
    h = jnp.take_along_axis(hidden, target_index[..., None], axis=1)  # [B, R, d]
    h = model.final_norm(h)
    tied = model.cfg.tie_word_embeddings
    head = model.embedding[...] if tied else model.lm_head[...]  # [V, d] tied, [d, V] untied (never transposed)
    vocab_axis = 0 if tied else 1
    V = head.shape[vocab_axis]
    chunk = min(vocab_chunk, V)
    num_chunks = -(-V // chunk)
    if num_chunks * chunk != V:
        pad = [(0, 0), (0, 0)]
        pad[vocab_axis] = (0, num_chunks * chunk - V)
        head = jnp.pad(head, pad)
    equation = "brd,cd->brc" if tied else "brd,dc->brc"
    cap = model.cfg.final_softcap

    def chunk_stats(carry, start):
        running_max, running_sum, target_logit = carry
        weights = jax.lax.dynamic_slice_in_dim(head, start, chunk, axis=vocab_axis)  # [C, d] or [d, C]
        logits = jnp.einsum(equation, h, weights, preferred_element_type=F32)  # [B, R, C]
        if cap is not None:
            logits = jnp.tanh(logits / cap) * cap
        ids = start + jnp.arange(chunk)
        logits = jnp.where(ids < V, logits, -jnp.inf)  # padding rows of the last chunk
        new_max = jnp.maximum(running_max, logits.max(-1))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(logits - new_max[..., None]).sum(-1)
        in_chunk = (target_ids >= start) & (target_ids < start + chunk)
        picked = jnp.take_along_axis(logits, jnp.clip(target_ids - start, 0, chunk - 1)[..., None], -1)[..., 0]
        return (new_max, running_sum, jnp.where(in_chunk, picked, target_logit)), None

    shape = target_ids.shape
    init = (jnp.full(shape, -jnp.inf, F32), jnp.zeros(shape, F32), jnp.zeros(shape, F32))
    # Rematerialised: the backward pass recomputes each chunk's logits instead of keeping all of them, so memory
    # holds one [B, R, chunk] block at a time (a vmapped grid of runs multiplies B).
    (running_max, running_sum, target_logit), _ = jax.lax.scan(
        jax.checkpoint(chunk_stats), init, jnp.arange(num_chunks) * chunk)
    return target_logit - (running_max + jnp.log(running_sum))


def lang_loss(logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over all response tokens of the batch (prompt and padding masked)."""
    mask = mask.astype(F32)
    return -(logprobs * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def simpo_loss(logprobs: jax.Array, mask: jax.Array, reference_logprob_sums: jax.Array) -> jax.Array:
    """Scaled SimPO (AxBench / RePS, beta 1, margin 0). Rows: P positives, then their P negatives.

    w = max(1, log p_ref(y-) - log p_ref(y+)); L = -log sigmoid(w/|y+| log pi(y+) - 1/|y-| log pi(y-)).
    reference_logprob_sums [2P]: summed response log-probs under the unsteered model (no gradient).
    """
    mask = mask.astype(F32)
    sums = (logprobs * mask).sum(-1)  # [2P]
    lengths = jnp.maximum(mask.sum(-1), 1.0)
    pairs = sums.shape[0] // 2
    pos, neg = sums[:pairs], sums[pairs:]
    ref = jax.lax.stop_gradient(reference_logprob_sums)
    weight = jnp.maximum(1.0, ref[pairs:] - ref[:pairs])
    margin = weight / lengths[:pairs] * pos - neg / lengths[pairs:]
    return -jax.nn.log_sigmoid(margin).mean()
