"""KV-cached generation: one prefill over left-padded prompts, then single-token decode steps, all in one jit.

Hooks are separate for the prefill and the decode steps: a prompt-only steering vector passes only a prefill hook,
so every decode step is exactly the unsteered model's.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from prosv_jax.inference.sampling import SamplingConfig, sample_next
from prosv_jax.models.decoder import Decoder, Hook, KVCache, positions_from_valid


class Generation(NamedTuple):
    tokens: jax.Array  # [B, N] generated ids; after a stop token, the pad id
    lengths: jax.Array  # [B] generated tokens up to and including the first stop token


def generate(model: Decoder, tokens, valid, *, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
             key: jax.Array | None = None, stop_ids: tuple[int, ...] | None = None, pad_id: int | None = None,
             prefill_hook: Hook | None = None, decode_hook: Hook | None = None) -> Generation:
    """Generates up to `max_new_tokens` after each left-padded prompt tokens [B, T] (valid [B, T] False on pads).

    Stops early once every row has produced a stop token (default: the model's EOS ids). Hooks must be pure;
    give arrays to them as `jax.tree_util.Partial` arguments so they are traced, not baked into the program.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    valid = jnp.asarray(valid, bool)
    if not bool(jnp.all(valid[:, -1])):
        raise ValueError("prompts must be left-padded: the last column of `valid` has padding")
    if sampling.temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs an explicit PRNG key (key=jax.random.key(seed))")
    cfg = model.cfg
    stop_ids = tuple(cfg.eos_token_ids if stop_ids is None else stop_ids)
    pad_id = (cfg.pad_token_id if cfg.pad_token_id is not None else 0) if pad_id is None else pad_id
    graphdef, state = nnx.split(model)
    key = jax.random.key(0) if key is None else key
    prefill_hook, decode_hook = (_as_pytree(h) for h in (prefill_hook, decode_hook))
    return _generate(graphdef, state, jnp.asarray(tokens, jnp.int32), valid, key, prefill_hook, decode_hook,
                     max_new_tokens=max_new_tokens, sampling=sampling, stop_ids=stop_ids, pad_id=pad_id)


def _as_pytree(hook):
    """A plain function becomes a leafless Partial, so jit keys its cache on the function itself."""
    if hook is None or isinstance(hook, jax.tree_util.Partial):
        return hook
    return jax.tree_util.Partial(hook)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "sampling", "stop_ids", "pad_id"))
def _generate(graphdef, state, tokens, valid, key, prefill_hook, decode_hook, *, max_new_tokens, sampling,
              stop_ids, pad_id):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = tokens.shape
    positions = positions_from_valid(valid)
    cache = KVCache.empty(model.cfg, batch, prompt_len + max_new_tokens, model.dtype)
    # The head (and its soft-cap) runs on the last prompt position only: over every position it would be a
    # [B, T, V] matmul whose other rows are thrown away (XLA does not sink the slice into the dot).
    last = model.cfg.num_layers - 1
    prefill = model(tokens, positions, valid, cache=cache, hook=prefill_hook, capture=(last,), logits=False)
    prefill_logits = model.head(prefill.hidden[last][:, -1])  # [B, V]
    stops = jnp.asarray(stop_ids, jnp.int32).reshape(-1)

    def emit(token, done):
        """The token to output (pad once a row is done) and the updated done flags."""
        out = jnp.where(done, pad_id, token)
        return out, done | (out[:, None] == stops[None, :]).any(-1)

    key, sub = jax.random.split(key)
    first, done = emit(sample_next(prefill_logits, sub, sampling), jnp.zeros((batch,), bool))
    result = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    lengths = jnp.ones((batch,), jnp.int32)

    def keep_going(carry):
        step, _, _, _, done, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def decode_step(carry):
        step, cache, previous, key, done, result, lengths = carry
        # The previous token sits `step` positions after the prompt's last token.
        step_positions = (positions[:, -1] + step)[:, None]  # [B, 1]
        out = model(previous[:, None], step_positions, jnp.ones((batch, 1), bool), cache=cache, hook=decode_hook)
        key, sub = jax.random.split(key)
        lengths = lengths + (~done).astype(jnp.int32)
        token, done = emit(sample_next(out.logits[:, 0], sub, sampling), done)
        return step + 1, out.cache, token, key, done, result.at[:, step].set(token), lengths

    carry = (jnp.int32(1), prefill.cache, first, key, done, result, lengths)
    *_, result, lengths = jax.lax.while_loop(keep_going, decode_step, carry)
    return Generation(result, lengths)
