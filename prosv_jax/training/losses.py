"""Losses on response tokens: Lang (cross-entropy) and scaled SimPO / RePS (method.md section 3).

Log-probabilities are computed at the response positions only, with the LM head applied in vocabulary chunks
(running log-sum-exp), so full-vocabulary logits are never materialised for every position.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from prosv_jax.models.decoder import Decoder

F32 = jnp.float32


def token_logprobs(model: Decoder, hidden: jax.Array, target_ids: jax.Array, vocab_chunk: int = 8192) -> jax.Array:
    """log p(target_ids) [B, R] from the last block's residuals hidden [B, R, d] at the positions predicting them."""
    h = model.final_norm(hidden)
    B, R, d = h.shape
    tied = model.cfg.tie_word_embeddings
    head = model.embedding[...] if tied else model.lm_head[...]  # [V, d] tied, [d, V] untied (never transposed)
    layout = _HeadLayout(tied, head.shape[0 if tied else 1], vocab_chunk, model.cfg.final_softcap)
    logprobs = _head_logprobs(layout, h.reshape(B * R, d), head, target_ids.reshape(B * R))  # [B*R]
    return logprobs.reshape(B, R)


class _HeadLayout(NamedTuple):
    """Static description of the LM head: tied ([V, d]) or not ([d, V]), vocabulary size, chunking, soft-cap."""

    tied: bool
    vocab: int
    vocab_chunk: int
    cap: float | None

    @property
    def chunk(self) -> int:
        """The chunk width: a divisor of V near vocab_chunk when there is one (no padded copy of the head)."""
        want = -(-self.vocab // min(self.vocab_chunk, self.vocab))
        for count in range(want, want + 8):
            if self.vocab % count == 0:
                return self.vocab // count
        return min(self.vocab_chunk, self.vocab)

    @property
    def num_chunks(self) -> int:
        return -(-self.vocab // self.chunk)


def _chunk_logits(layout: _HeadLayout, h, head, start):
    """Soft-capped logits [N, C] of h [N, d] for vocabulary ids start..start+C-1 (padding ids: -inf), the chunk's
    weights ([C, d] tied, [d, C] untied) and the cap's derivative [N, C] (ones without a cap)."""
    axis = 0 if layout.tied else 1
    weights = jax.lax.dynamic_slice_in_dim(head, start, layout.chunk, axis=axis)
    logits = jnp.einsum("nd,cd->nc" if layout.tied else "nd,dc->nc", h, weights, preferred_element_type=F32)
    slope = jnp.ones_like(logits)
    if layout.cap is not None:
        squashed = jnp.tanh(logits / layout.cap)
        logits, slope = squashed * layout.cap, 1.0 - squashed * squashed
    ids = start + jnp.arange(layout.chunk)
    return jnp.where(ids < layout.vocab, logits, -jnp.inf), weights, slope


def _padded(layout: _HeadLayout, head):
    """The head padded to num_chunks * chunk vocabulary entries (a no-op when the chunk divides V)."""
    extra = layout.num_chunks * layout.chunk - layout.vocab
    if not extra:
        return head
    return jnp.pad(head, [(0, extra), (0, 0)] if layout.tied else [(0, 0), (0, extra)])


def _logprob_stats(layout: _HeadLayout, h, head, target_ids, with_grad: bool):
    """One pass over the vocabulary chunks: running max, running sum of exp, target logit and, with_grad, the
    running sum of exp(logit) * cap'(logit) * W [N, d] (all rescaled to the running max, as in online softmax)."""
    head = _padded(layout, head)
    N, d = h.shape

    def step(carry, start):
        running_max, running_sum, target_logit, target_slope, weighted = carry
        logits, weights, slope = _chunk_logits(layout, h, head, start)  # [N, C]
        new_max = jnp.maximum(running_max, logits.max(-1))
        rescale = jnp.exp(running_max - new_max)
        probs = jnp.exp(logits - new_max[:, None])  # [N, C], unnormalised
        running_sum = running_sum * rescale + probs.sum(-1)
        in_chunk = (target_ids >= start) & (target_ids < start + layout.chunk)
        local = jnp.clip(target_ids - start, 0, layout.chunk - 1)[:, None]
        target_logit = jnp.where(in_chunk, jnp.take_along_axis(logits, local, -1)[:, 0], target_logit)
        if with_grad:
            target_slope = jnp.where(in_chunk, jnp.take_along_axis(slope, local, -1)[:, 0], target_slope)
            mixed = (probs * slope).astype(weights.dtype)  # [N, C]
            weighted = weighted * rescale[:, None] + jnp.einsum(
                "nc,cd->nd" if layout.tied else "nc,dc->nd", mixed, weights, preferred_element_type=F32)
        return (new_max, running_sum, target_logit, target_slope, weighted), None

    init = (jnp.full((N,), -jnp.inf, F32), jnp.zeros((N,), F32), jnp.zeros((N,), F32), jnp.ones((N,), F32),
            jnp.zeros((N, d) if with_grad else (N, 0), F32))
    starts = jnp.arange(layout.num_chunks) * layout.chunk
    (running_max, running_sum, target_logit, target_slope, weighted), _ = jax.lax.scan(step, init, starts)
    return target_logit - (running_max + jnp.log(running_sum)), running_sum, target_slope, weighted


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _head_logprobs(layout: _HeadLayout, h, head, target_ids):
    """log p(target) [N] of normed residuals h [N, d] under the LM head, in vocabulary chunks.

    Differentiated, it costs two head matmuls instead of three (forward, recompute, backward) and keeps no logits:
    the forward pass also accumulates d logp / d h = cap'(z_y) W_y - sum_v p_v cap'(z_v) W_v online. The head's
    weights get no gradient (they are frozen)."""
    return _logprob_stats(layout, h, head, target_ids, with_grad=False)[0]


def _head_logprobs_fwd(layout, h, head, target_ids):
    logprobs, running_sum, target_slope, weighted = _logprob_stats(layout, h, head, target_ids, with_grad=True)
    if layout.tied:
        target_weights = jnp.take(head, target_ids, axis=0)  # [N, d]
    else:
        target_weights = jnp.take(head, target_ids, axis=1).T  # [d, N] -> [N, d]
    grad_h = target_slope[:, None] * target_weights.astype(F32) - weighted / running_sum[:, None]  # [N, d]
    return logprobs, (grad_h, jnp.zeros((0,), h.dtype))  # the empty array carries h's dtype


def _head_logprobs_bwd(layout, residuals, cotangent):
    grad_h, h_dtype_carrier = residuals
    d_h = (cotangent[:, None] * grad_h).astype(h_dtype_carrier.dtype)  # [N, d]
    return d_h, None, None


_head_logprobs.defvjp(_head_logprobs_fwd, _head_logprobs_bwd)


def lang_loss(logprobs: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over all response tokens of the batch (prompt and padding masked)."""
    mask = mask.astype(F32)
    return -(logprobs * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def simpo_loss(logprobs: jax.Array, mask: jax.Array, reference_logprob_sums: jax.Array) -> jax.Array:
    """Scaled SimPO (AxBench / RePS, beta 1, margin 0) of rows [2P, R]: P positives, then their P negatives."""
    mask = mask.astype(F32)
    return simpo_loss_of_sums((logprobs * mask).sum(-1), mask.sum(-1), reference_logprob_sums)


def example_sums(logprobs: jax.Array, mask: jax.Array, example: jax.Array, examples: int
                 ) -> tuple[jax.Array, jax.Array]:
    """(summed log-probs, token counts) [examples] of packed rows' response slots [B, R], slot (b, r) belonging
    to example `example[b, r]`."""
    mask = mask.astype(F32)
    flat = example.reshape(-1)  # [B*R]
    sums = jax.ops.segment_sum((logprobs * mask).reshape(-1), flat, num_segments=examples)
    return sums, jax.ops.segment_sum(mask.reshape(-1), flat, num_segments=examples)


def simpo_loss_of_sums(sums: jax.Array, lengths: jax.Array, reference_logprob_sums: jax.Array) -> jax.Array:
    """Scaled SimPO from per-example summed log-probs and token counts [2P]: P positives, then their P negatives.

    w = max(1, log p_ref(y-) - log p_ref(y+)); L = -log sigmoid(w/|y+| log pi(y+) - 1/|y-| log pi(y-)).
    reference_logprob_sums [2P]: summed response log-probs under the unsteered model (no gradient). The mean is over
    the real pairs: a pair without response tokens (the padding of a partial last batch) adds nothing, as when the
    reference's last batch is smaller.
    """
    pairs = sums.shape[0] // 2
    real = (lengths[:pairs] > 0).astype(F32)
    lengths = jnp.maximum(lengths, 1.0)
    pos, neg = sums[:pairs], sums[pairs:]
    ref = jax.lax.stop_gradient(reference_logprob_sums)
    weight = jnp.maximum(1.0, ref[pairs:] - ref[:pairs])
    margin = weight / lengths[:pairs] * pos - neg / lengths[pairs:]
    return -(jax.nn.log_sigmoid(margin) * real).sum() / jnp.maximum(real.sum(), 1.0)
