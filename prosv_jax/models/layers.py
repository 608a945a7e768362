"""Building blocks of the decoder: RMSNorm, rotary embedding, grouped-query attention, gated MLP.

Shape letters: B batch, T query length, S key length (cache), d model width, H query heads, K key/value heads,
G = H / K query heads per key head, D head width, F MLP width, V vocabulary.
Matmuls accumulate in float32 (`preferred_element_type`) and round back to the activation dtype, as PyTorch does
for bfloat16; XLA:CPU only reaches its bfloat16 rate this way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prosv_jax.models.config import ModelConfig

F32 = jnp.float32


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def matmul(equation: str, x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """einsum with float32 accumulation, returned in out_dtype (default: x's dtype).

    Its backward pass multiplies in the operands' dtype too (the cotangent rounded to it, as PyTorch keeps bfloat16
    gradients), accumulating in float32: autodiff would pair a float32 cotangent with a bfloat16 operand, which
    XLA:CPU runs at the float32 rate. In float32 the two are the same computation. Every index of `equation` must
    appear in at least two of its three terms ("btd,df->btf", "bqd,bsd->bqs").
    """
    return _einsum(equation, x, w, out_dtype or x.dtype)


def _einsum(equation: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    return jnp.einsum(equation, a, b, preferred_element_type=F32).astype(dtype)


def _matmul_fwd(equation, x, w, out_dtype):
    return _einsum(equation, x, w, out_dtype or x.dtype), (x, w)


def _matmul_bwd(equation, out_dtype, residuals, cotangent):
    x, w = residuals
    inputs, out = equation.split("->")
    x_axes, w_axes = inputs.split(",")
    lonely = [i for i in set(x_axes + w_axes + out) if (i in x_axes) + (i in w_axes) + (i in out) < 2]
    if lonely:
        raise ValueError(f"matmul({equation!r}): indices {lonely} appear in one term only; sum them out first")
    g = cotangent.astype(x.dtype)
    return (_einsum(f"{out},{w_axes}->{x_axes}", g, w, x.dtype),  # d x
            _einsum(f"{x_axes},{out}->{w_axes}", x, g, w.dtype))  # d w


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _normal(rngs: nnx.Rngs, shape, dtype, std: float = 0.02) -> nnx.Param:
    return nnx.Param((std * jax.random.normal(rngs.params(), shape, F32)).astype(dtype))


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32. Gemma scales by (1 + w) before the cast back; Llama by w after it."""

    def __init__(self, dim: int, eps: float, gemma: bool, dtype):
        self.eps = eps
        self.gemma = gemma
        self.scale = nnx.Param(jnp.zeros((dim,), dtype) if gemma else jnp.ones((dim,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(F32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.gemma:
            return (normed * (1.0 + self.scale[...].astype(F32))).astype(x.dtype)
        return self.scale[...] * normed.astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates x [B, T, N, D] by its positions [B, T]; the halves layout of transformers' `rotate_half`."""
    freqs = positions.astype(F32)[..., None] * jnp.asarray(inv_freq, F32)  # [B, T, D/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    """Grouped-query self-attention with optional biases, q/k norms, logit soft-cap and sliding window."""

    def __init__(self, cfg: ModelConfig, layer: int, dtype, rngs: nnx.Rngs):
        d, H, K, D = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.num_kv_heads = K
        self.scale = cfg.attn_scale
        self.softcap = cfg.attn_softcap
        self.window = cfg.window_for(layer)
        self.rope = cfg.rope_for(cfg.layer_types[layer])
        self.q = _normal(rngs, (d, H, D), dtype)
        self.k = _normal(rngs, (d, K, D), dtype)
        self.v = _normal(rngs, (d, K, D), dtype)
        self.o = _normal(rngs, (H, D, d), dtype)
        if cfg.qkv_bias:
            self.q_bias = nnx.Param(jnp.zeros((H, D), dtype))
            self.k_bias = nnx.Param(jnp.zeros((K, D), dtype))
            self.v_bias = nnx.Param(jnp.zeros((K, D), dtype))
        if cfg.o_bias:
            self.o_bias = nnx.Param(jnp.zeros((d,), dtype))
        if cfg.qk_norm:
            self.q_norm = RMSNorm(D, cfg.rms_norm_eps, cfg.gemma_norm, dtype)
            self.k_norm = RMSNorm(D, cfg.rms_norm_eps, cfg.gemma_norm, dtype)

    def queries(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Queries [B, T, H, D] of x [B, T, d], rotated to their positions [B, T]."""
        q = matmul("btd,dhk->bthk", x, self.q[...])
        if hasattr(self, "q_bias"):
            q = q + self.q_bias[...]
        if hasattr(self, "q_norm"):
            q = self.q_norm(q)
        return apply_rope(q, positions, self.rope.inv_freq(q.shape[-1]))

    def keys_values(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys and values [B, T, K, D] of x [B, T, d]; the keys rotated to their positions [B, T]."""
        k = matmul("btd,dhk->bthk", x, self.k[...])
        v = matmul("btd,dhk->bthk", x, self.v[...])
        if hasattr(self, "k_bias"):
            k, v = k + self.k_bias[...], v + self.v_bias[...]
        if hasattr(self, "k_norm"):
            k = self.k_norm(k)
        return apply_rope(k, positions, self.rope.inv_freq(k.shape[-1])), v

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
        """Attention output [B, T, d] of q [B, T, H, D] over k, v [B, S, K, D] where mask [B, T, S] is True."""
        B, T, H, D = q.shape
        K = self.num_kv_heads
        q = q.reshape(B, T, K, H // K, D)  # [B, T, K, G, D]
        logits = matmul("btkgd,bskd->bkgts", q, k, F32) * self.scale
        if self.softcap is not None:
            logits = jnp.tanh(logits / self.softcap) * self.softcap
        logits = jnp.where(mask[:, None, None], logits, jnp.finfo(F32).min)  # mask -> [B, 1, 1, T, S]
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = matmul("bkgts,bskd->btkgd", probs, v)
        out = out.reshape(B, T, H, D)  # [B, T, K, G, D] -> [B, T, H, D]
        out = matmul("bthk,hkd->btd", out, self.o[...])
        if hasattr(self, "o_bias"):
            out = out + self.o_bias[...]
        return out


class MLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) * up(x)), SiLU (Llama, Qwen) or tanh-GELU (Gemma)."""

    def __init__(self, cfg: ModelConfig, dtype, rngs: nnx.Rngs):
        d, F = cfg.hidden_size, cfg.intermediate_size
        self.activation = cfg.activation
        self.gate = _normal(rngs, (d, F), dtype)
        self.up = _normal(rngs, (d, F), dtype)
        self.down = _normal(rngs, (F, d), dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        # The activation runs in float32 and is rounded once, as PyTorch does for bfloat16; XLA:CPU's bfloat16
        # elementwise math is ~5x slower than float32 (tanh-GELU over [4, 128, 4096]: 16 ms against 3 ms).
        gate = matmul("btd,df->btf", x, self.gate[...]).astype(F32)
        act = jax.nn.silu(gate) if self.activation == "silu" else jax.nn.gelu(gate, approximate=True)
        act = act.astype(x.dtype)
        return matmul("btf,fd->btd", act * matmul("btd,df->btf", x, self.up[...]), self.down[...])
