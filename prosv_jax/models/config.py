"""Model configuration: one frozen dataclass for every supported family, built from a HF `config.json`.

The decoder is a Llama-like core with feature flags; `ModelConfig.from_hf` reads a transformers config and sets
the flags per family. Anything the decoder does not implement is rejected with an error that names it: a silent
default would give wrong logits without a word.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedConfigError(ValueError):
    """A config feature that prosv-jax does not implement (it would change the model's math)."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one layer type; `inv_freq` follows transformers' `ROPE_INIT_FUNCTIONS`."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    @classmethod
    def from_hf(cls, params: Mapping[str, Any], where: str) -> "RopeConfig":
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedConfigError(
                f"{where}: rope_type {rope_type!r} is not implemented; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
        known = {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
                 "original_max_position_embeddings", "partial_rotary_factor"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise UnsupportedConfigError(f"{where}: rope parameter(s) {unknown} are not implemented")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedConfigError(f"{where}: partial_rotary_factor != 1.0 is not implemented")
        if "rope_theta" not in params:
            raise UnsupportedConfigError(f"{where}: rope_theta is missing; refusing to guess a default")
        kwargs: dict[str, Any] = {"theta": float(params["rope_theta"]), "rope_type": rope_type}
        if rope_type in ("linear", "llama3"):
            kwargs["factor"] = float(params["factor"])
        if rope_type == "llama3":
            kwargs["low_freq_factor"] = float(params["low_freq_factor"])
            kwargs["high_freq_factor"] = float(params["high_freq_factor"])
            kwargs["original_max_position_embeddings"] = int(params["original_max_position_embeddings"])
        return cls(**kwargs)

    def inv_freq(self, head_dim: int):
        """Inverse frequencies, shape [head_dim // 2], float64 numpy (cast by the caller)."""
        import numpy as np

        # Float32 exponent then float64 math mirrors torch's float32 `arange / dim` followed by a float32 power.
        exponents = (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim))
        inv_freq = (1.0 / (np.float32(self.theta) ** exponents)).astype(np.float32)
        if self.rope_type == "linear":
            inv_freq = inv_freq / np.float32(self.factor)
        elif self.rope_type == "llama3":
            low_wavelen = self.original_max_position_embeddings / self.low_freq_factor
            high_wavelen = self.original_max_position_embeddings / self.high_freq_factor
            wavelen = 2 * math.pi / inv_freq
            scaled = np.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
            smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor) / (
                self.high_freq_factor - self.low_freq_factor)
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
        return inv_freq


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs; hashable, so it can be a static argument under `jax.jit`."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    # Gemma RMSNorm scales by (1 + w) and casts after the multiply; Llama scales by w after the cast.
    gemma_norm: bool = False
    activation: str = "silu"  # "silu" or "gelu_tanh"
    post_norms: bool = False  # Gemma-2/3: extra norms after attention and after the FFN
    qk_norm: bool = False  # Gemma-3: RMSNorm on each query and key head
    qkv_bias: bool = False  # Qwen2: biases on q/k/v
    o_bias: bool = False
    embed_scale: bool = False  # Gemma: embeddings times sqrt(d), rounded to the parameter dtype
    attn_scale: float = 1.0
    attn_softcap: float | None = None
    final_softcap: float | None = None
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    rope: tuple[tuple[str, RopeConfig], ...] = ()  # (layer type, rope) pairs
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if len(self.layer_types) != self.num_layers:
            raise UnsupportedConfigError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")
        if self.activation not in ("silu", "gelu_tanh"):
            raise UnsupportedConfigError(f"activation {self.activation!r} is not implemented")
        for layer_type in set(self.layer_types):
            if layer_type not in (FULL_ATTENTION, SLIDING_ATTENTION):
                raise UnsupportedConfigError(f"layer type {layer_type!r} is not implemented")
            self.rope_for(layer_type)
        if SLIDING_ATTENTION in self.layer_types and not self.sliding_window:
            raise UnsupportedConfigError("sliding_attention layers need a positive sliding_window")

    def rope_for(self, layer_type: str) -> RopeConfig:
        for name, rope in self.rope:
            if name == layer_type:
                return rope
        raise UnsupportedConfigError(f"no RoPE parameters for layer type {layer_type!r}")

    def window_for(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == SLIDING_ATTENTION else None

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf_config, ignore_fields: tuple[str, ...] = ()) -> "ModelConfig":
        """Builds the config from a transformers `PretrainedConfig` (or its dict).

        Every field of the HF config is either read, known to be harmless, or checked to hold the value the
        decoder implements; any other field raises, naming it (pass `ignore_fields` to accept it knowingly).
        """
        from prosv_jax.models import hf_config as hf

        return hf.model_config_from_hf(cls, hf_config, ignore_fields)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, ignore_fields: tuple[str, ...] = ()) -> "ModelConfig":
        """Reads `config.json` from a local HF model directory."""
        path = os.path.join(model_dir, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: a HF model directory needs config.json")
        with open(path) as f:
            return cls.from_hf(json.load(f), ignore_fields)
