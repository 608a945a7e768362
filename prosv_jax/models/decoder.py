"""The config-driven decoder (Gemma-2, Gemma-3 text, Llama-3.x, Qwen2/2.5) with a KV cache and hook sites.

The model knows nothing about steering. It exposes one hook site per block: the residual stream after block L
(transformers' `hidden_states[L+1]`). A hook is any `hook(layer, hidden) -> hidden`; pass a
`jax.tree_util.Partial` to carry arrays (steering parameters, position masks) through `jit` as traced data.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from prosv_jax.models.config import ModelConfig
from prosv_jax.models.layers import F32, MLP, Attention, RMSNorm, _normal
from prosv_jax.models.segments import positions_from_segments

Hook = Callable[[int, jax.Array], jax.Array]
# Teacher-forced passes (no KV cache) run each long stretch of plain blocks (no hook, no capture, not row-cut) as one
# `lax.scan` over groups of blocks whose layer types repeat, so compile time stays nearly flat in the depth
# (benchmarks/compile_time.py: 8 -> 64 blocks 1.14x scanned, 2.61x unrolled). Scanning pays from about 12 blocks on
# 2 cores; it stacks the scanned blocks' weights at every call (a copy: steps 2-3% slower at 32-64 blocks), so
# a run of many thousand steps may prefer `Decoder.scan_min_blocks = 0` (never scan).
SCAN_MIN_BLOCKS = 12
MAX_SCAN_PERIOD = 8  # longest repeating pattern of layer types scanned over (Gemma-2: 2, Gemma-3: 6)


class KVCache(NamedTuple):
    """Keys and values of every layer, [B, S, K, D] each, filled left to right.

    `valid` [B, S] marks real (non-padding) entries; `index` is the slot the next token is written to. All rows
    share `index`: prompts are left-padded so that they end together.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    valid: jax.Array
    index: jax.Array

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, length: int, dtype) -> "KVCache":
        shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        return cls(zeros, zeros, jnp.zeros((batch, length), bool), jnp.zeros((), jnp.int32))


class ForwardOutput(NamedTuple):
    logits: jax.Array | None  # [B, T, V] float32, None when the head was skipped
    cache: KVCache | None
    hidden: dict[int, jax.Array]  # block index -> residual after that block [B, T, d], for `capture`


class Block(nnx.Module):
    """Pre-norm transformer block; Gemma adds a norm after attention and after the MLP."""

    def __init__(self, cfg: ModelConfig, layer: int, dtype, rngs: nnx.Rngs):
        norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.gemma_norm, dtype)  # noqa: E731
        self.pre_attn_norm = norm()
        self.attn = Attention(cfg, layer, dtype, rngs)
        self.pre_ffn_norm = norm()
        self.mlp = MLP(cfg, dtype, rngs)
        if cfg.post_norms:
            self.post_attn_norm = norm()
            self.post_ffn_norm = norm()

    def __call__(self, x, positions, mask, kv, rows: jax.Array | None = None):
        """x [B, T, d]; kv is None (attend to this chunk) or (cache_k, cache_v, index) to write into first.

        rows [B, R] (without kv): compute the output at those positions only, [B, R, d]. Every position still
        gives its key and value, but queries, output projection and MLP run on R rows instead of T.
        """
        normed = self.pre_attn_norm(x)
        k, v = self.attn.keys_values(normed, positions)
        if kv is not None:
            cache_k, cache_v, index = kv
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, index, 0, 0))
        window_mask = mask[self.attn.window]  # [B, T, S]
        if rows is not None:
            x, normed, positions, window_mask = (take_rows(a, rows) for a in (x, normed, positions, window_mask))
        h = self.attn.attend(self.attn.queries(normed, positions), k, v, window_mask)
        if hasattr(self, "post_attn_norm"):
            h = self.post_attn_norm(h)
        x = x + h
        h = self.mlp(self.pre_ffn_norm(x))
        if hasattr(self, "post_ffn_norm"):
            h = self.post_ffn_norm(h)
        return x + h, (k, v)


def take_rows(a: jax.Array, rows: jax.Array) -> jax.Array:
    """a [B, T, ...] at positions rows [B, R] -> [B, R, ...]."""
    return jnp.take_along_axis(a, rows.reshape(rows.shape + (1,) * (a.ndim - 2)), axis=1)


def attention_masks(cfg: ModelConfig, q_index: jax.Array, key_valid: jax.Array,
                    segments: jax.Array | None = None) -> dict:
    """Masks [B, T, S] per sliding window (None = full): causal by slot index, valid keys only, and with packed
    rows' `segments` [B, T] (T = S, no cache) within each query's own segment."""
    k_index = jnp.arange(key_valid.shape[1])
    causal = k_index[None, :] <= q_index[:, None]  # [T, S]
    masks = {}
    for window in {cfg.window_for(i) for i in range(cfg.num_layers)}:
        allowed = causal if window is None else causal & (q_index[:, None] - k_index[None, :] < window)
        masks[window] = allowed[None] & key_valid[:, None, :]
        if segments is not None:
            masks[window] = masks[window] & (segments[:, :, None] == segments[:, None, :])  # [B, T, S]
    return masks


class Decoder(nnx.Module):
    """Decoder-only LM. Call it, or use `embed` / `run_blocks` / `head` to run a slice of it."""

    def __init__(self, cfg: ModelConfig, dtype=jnp.float32, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.scan_min_blocks = SCAN_MIN_BLOCKS  # 0: never scan
        self.embedding = _normal(rngs, (cfg.vocab_size, cfg.hidden_size), dtype)
        self.layers = nnx.List([Block(cfg, i, dtype, rngs) for i in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.gemma_norm, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = _normal(rngs, (cfg.hidden_size, cfg.vocab_size), dtype)

    @property
    def dtype(self):
        return self.embedding.dtype

    def embed(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings [B, T, d]; Gemma multiplies by sqrt(d) rounded to the parameter dtype."""
        h = jnp.take(self.embedding[...], tokens, axis=0)
        if self.cfg.embed_scale:
            h = h * jnp.asarray(self.cfg.hidden_size ** 0.5, h.dtype)
        return h

    def head(self, h: jax.Array) -> jax.Array:
        """Float32 logits [..., V] of residuals h [..., d] (final norm, LM head, soft-cap)."""
        h = self.final_norm(h)
        if self.cfg.tie_word_embeddings:
            logits = jnp.einsum("...d,vd->...v", h, self.embedding[...], preferred_element_type=F32)
        else:
            logits = jnp.einsum("...d,dv->...v", h, self.lm_head[...], preferred_element_type=F32)
        if self.cfg.final_softcap is not None:
            logits = jnp.tanh(logits / self.cfg.final_softcap) * self.cfg.final_softcap
        return logits

    def run_blocks(self, h, positions, key_valid, *, cache: KVCache | None = None, hook: Hook | None = None,
                   capture: Sequence[int] = (), start: int = 0, stop: int | None = None,
                   rows: jax.Array | None = None, rows_hook: Hook | None = None, segments: jax.Array | None = None):
        """Runs blocks [start, stop) on residuals h [B, T, d]; returns (h, new cache, captured residuals).

        key_valid is [B, T] without a cache, and the cache's [B, S] validity (already updated) with one.
        rows [B, R] (no cache): only the residuals at those positions are wanted, so the last block computes those
        rows alone and h comes back [B, R, d]; `rows_hook` then replaces `hook` after that block (its masks taken
        at the rows). segments [B, T] (no cache): packed rows, each token attending within its own example
        (`prosv_jax.models.segments`); the positions given must restart per segment.
        """
        stop = self.cfg.num_layers if stop is None else stop
        if cache is not None and (rows is not None or segments is not None):
            raise ValueError("rows= and segments= run without a KV cache (teacher-forced passes); drop the cache")
        if cache is None:
            q_index = jnp.arange(h.shape[1])
        else:
            q_index = cache.index + jnp.arange(h.shape[1])
        masks = attention_masks(self.cfg, q_index, key_valid, segments)
        captured, keys, values = {}, list(cache.keys) if cache else None, list(cache.values) if cache else None
        scanned = {} if cache is not None or not self.scan_min_blocks else self._scan_plan(
            start, stop, set(capture) | ({stop - 1} if rows is not None else set()), hook)
        layer = start
        while layer < stop:
            if layer in scanned:
                period, groups = scanned[layer]
                h = self._scan(h, positions, masks, layer, period, groups)
                layer += period * groups
                continue
            kv = None if cache is None else (cache.keys[layer], cache.values[layer], cache.index)
            last_rows = rows is not None and layer == stop - 1
            h, (k, v) = self.layers[layer](h, positions, masks, kv, rows if last_rows else None)
            if cache is not None:
                keys[layer], values[layer] = k, v
            layer_hook = rows_hook if last_rows else hook
            if layer_hook is not None:
                h = layer_hook(layer, h)
            if layer in capture:
                captured[layer] = h
            layer += 1
        if rows is not None and start >= stop:
            h = take_rows(h, rows)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(tuple(keys), tuple(values), key_valid, cache.index + h.shape[1])
        return h, new_cache, captured

    def _scan_plan(self, start: int, stop: int, kept: set[int], hook) -> dict[int, tuple[int, int]]:
        """{first block: (period, groups)}: the stretches of blocks [start, stop) to run as one `lax.scan` each, over
        groups of `period` blocks whose layer types repeat (1 for Llama and Qwen, 2 for Gemma-2, 6 for Gemma-3).
        Blocks in `kept` (captured, row-cut) or hooked stay unrolled; a hook that does not say which blocks it
        edits (a `layers` attribute of its function) keeps them all unrolled."""
        hooked = getattr(getattr(hook, "func", hook), "layers", None) if hook is not None else frozenset()
        if hooked is None:
            return {}
        types, plan, layer = self.cfg.layer_types, {}, start
        while layer < stop:
            end = layer
            while end < stop and end not in kept and end not in hooked:
                end += 1
            for period in range(1, MAX_SCAN_PERIOD + 1):
                groups = (end - layer) // period
                if groups < 2:
                    break
                repeats = all(types[i] == types[i + period] for i in range(layer, layer + period * (groups - 1)))
                if repeats and period * groups >= self.scan_min_blocks:
                    plan[layer] = (period, groups)
                    break
            layer = layer + period * groups if layer in plan else max(end, layer + 1)
        return plan

    def _scan(self, h, positions, masks, first: int, period: int, groups: int):
        """Blocks first .. first + period * groups - 1 as one scan over `groups` groups of `period` blocks: one
        traced copy of the group instead of every block, so compile time stays flat in the depth."""
        graphdefs, stacked = [], []
        for j in range(period):
            layers = [self.layers[first + g * period + j] for g in range(groups)]
            graphdefs.append(nnx.graphdef(layers[0]))
            states = [nnx.state(block) for block in layers]
            stacked.append(jax.tree.map(lambda *xs: jnp.stack(xs), *states))  # leaves [groups, ...]

        def group(h, states):
            for graphdef, state in zip(graphdefs, states):
                h, _ = nnx.merge(graphdef, state)(h, positions, masks, None)
            return h, None

        h, _ = jax.lax.scan(group, h, stacked)
        return h

    def __call__(self, tokens: jax.Array, positions: jax.Array, valid: jax.Array, *, cache: KVCache | None = None,
                 hook: Hook | None = None, capture: Sequence[int] = (), logits: bool = True) -> ForwardOutput:
        """Forward pass over tokens [B, T] at positions [B, T]; valid [B, T] is False on padding.

        With a cache, the tokens are written at `cache.index` and attend to everything cached before them.
        """
        bad = [layer for layer in capture if not 0 <= layer < self.cfg.num_layers]
        if bad:
            raise ValueError(f"capture layer(s) {bad} out of range: the model has blocks 0..{self.cfg.num_layers - 1}")
        key_valid = valid
        if cache is not None:
            key_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.index))
        h, new_cache, captured = self.run_blocks(self.embed(tokens), positions, key_valid, cache=cache, hook=hook,
                                                 capture=capture)
        return ForwardOutput(self.head(h) if logits else None, new_cache, captured)


def positions_from_valid(valid: jax.Array) -> jax.Array:
    """Positions [B, T] counting real tokens only, so left padding does not shift them (pads get 0)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def token_positions(valid: jax.Array, segments: jax.Array | None = None) -> jax.Array:
    """Positions [B, T]: per real token of an unpacked row, or restarting per example of a packed one."""
    return positions_from_valid(valid) if segments is None else positions_from_segments(segments)
