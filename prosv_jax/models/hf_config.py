"""Translation of transformers configs into `ModelConfig`, with every field accounted for.

Each family lists the fields it reads, the fields that cannot change the forward pass (dropout, init range,
bookkeeping), and the fields whose value must be the one the decoder implements. A field in none of these lists
raises `UnsupportedConfigError`: a new transformers feature is never silently ignored.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

from prosv_jax.models.config import FULL_ATTENTION, RopeConfig, UnsupportedConfigError

SUPPORTED_MODEL_TYPES = ("gemma2", "gemma3_text", "llama", "qwen2")

_READ_COMMON = {
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "layer_types", "sliding_window",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
}
# Fields that change nothing in a forward pass at inference or in steering-vector training: names, versions,
# bookkeeping, special token ids other than those read, caching, the storage dtype.
_HARMLESS_COMMON = {
    "architectures", "initializer_range", "use_cache", "attention_dropout", "max_position_embeddings",
    "transformers_version", "torch_dtype", "dtype", "_name_or_path", "_model_name_or_path", "name_or_path",
    "model_name", "_commit_hash", "cache_implementation", "unk_token_id", "sep_token_id", "cls_token_id",
    "mask_token_id", "decoder_start_token_id", "output_attentions", "output_hidden_states", "return_dict",
    "rope_scaling", "rope_theta",  # folded into rope_parameters by transformers before we read it
}
_FAMILY = {
    "gemma2": dict(
        read={"hidden_activation", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"},
        harmless={"hidden_act"},  # transformers' Gemma-2 reads hidden_activation, not hidden_act
        fixed={"attention_bias": (False,), "use_bidirectional_attention": (None, False)},
    ),
    "gemma3_text": dict(
        read={"hidden_activation", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"},
        harmless={"hidden_act", "_sliding_window_pattern", "sliding_window_pattern", "rope_local_base_freq"},
        fixed={"attention_bias": (False,), "use_bidirectional_attention": (None, False)},
    ),
    "llama": dict(
        read={"attention_bias"},
        harmless={"pretraining_tp"},  # only splits the matmuls; the math is the same
        fixed={"hidden_act": ("silu",), "mlp_bias": (False,)},
    ),
    "qwen2": dict(
        read=set(),
        harmless={"use_sliding_window", "max_window_layers"},  # already expressed by layer_types
        fixed={"hidden_act": ("silu",)},
    ),
}


# Fields a user has accepted for the whole process (`--accept-config-field` on the command line).
_ACCEPTED_FIELDS: set[str] = set()


@contextlib.contextmanager
def accepted_config_fields(names):
    """Within the block, the named config fields are accepted in every model loaded (a user's informed choice that
    they do not change the math: `--accept-config-field`); Python callers can pass `ignore_fields` per load."""
    added = set(names) - _ACCEPTED_FIELDS
    _ACCEPTED_FIELDS.update(added)
    try:
        yield
    finally:
        _ACCEPTED_FIELDS.difference_update(added)


def _hf_config_object(hf_config):
    import transformers

    if isinstance(hf_config, transformers.PretrainedConfig):
        return hf_config
    data = dict(hf_config)
    model_type = data.pop("model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        hint = " (for Gemma-3 use the text-only model, model_type 'gemma3_text')" if model_type == "gemma3" else ""
        raise UnsupportedConfigError(
            f"unsupported architecture: model_type {model_type!r}{hint}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return transformers.AutoConfig.for_model(model_type, **data)


def _generic_fields() -> set[str]:
    import transformers

    return set(transformers.PretrainedConfig().to_dict())


def _check_fields(d: Mapping[str, Any], family: str, ignore_fields) -> None:
    spec = _FAMILY[family]
    for name, allowed in spec["fixed"].items():
        if name in d and d[name] not in allowed and name not in ignore_fields:
            raise UnsupportedConfigError(
                f"config field {name}={d[name]!r} is not implemented for {family} (supported: {allowed})")
    accounted = (_READ_COMMON | _HARMLESS_COMMON | spec["read"] | spec["harmless"] | set(spec["fixed"])
                 | set(ignore_fields) | _ACCEPTED_FIELDS | (_generic_fields() - _READ_COMMON))
    unknown = sorted(set(d) - accounted)
    if unknown:
        raise UnsupportedConfigError(
            f"config field(s) {unknown} of {family} are not understood by prosv-jax and may change the model's "
            "math; if they do not, accept them knowingly (--accept-config-field NAME on the command line, "
            "ignore_fields=(...) in Python)")


def _ropes(d: Mapping[str, Any], layer_types: tuple[str, ...]) -> tuple[tuple[str, RopeConfig], ...]:
    params = d.get("rope_parameters")
    if not params:
        raise UnsupportedConfigError("rope_parameters is missing from the config")
    if all(isinstance(v, Mapping) for v in params.values()):  # per layer type (Gemma-3)
        missing = sorted(set(layer_types) - set(params))
        if missing:
            raise UnsupportedConfigError(f"rope_parameters has no entry for layer type(s) {missing}")
        return tuple((t, RopeConfig.from_hf(params[t], f"rope_parameters[{t!r}]")) for t in sorted(set(layer_types)))
    rope = RopeConfig.from_hf(params, "rope_parameters")
    return tuple((t, rope) for t in sorted(set(layer_types)))


def _eos_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def model_config_from_hf(cls, hf_config, ignore_fields=()):
    """See `ModelConfig.from_hf`."""
    obj = _hf_config_object(hf_config)
    d = obj.to_dict()
    family = d["model_type"]
    if family not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedConfigError(
            f"unsupported architecture: model_type {family!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    _check_fields(d, family, tuple(ignore_fields))
    num_layers = int(d["num_hidden_layers"])
    num_heads = int(d["num_attention_heads"])
    head_dim = int(d.get("head_dim") or d["hidden_size"] // num_heads)
    layer_types = tuple(d.get("layer_types") or (FULL_ATTENTION,) * num_layers)
    is_gemma = family in ("gemma2", "gemma3_text")
    if is_gemma and d["hidden_activation"] != "gelu_pytorch_tanh":
        raise UnsupportedConfigError(f"hidden_activation {d['hidden_activation']!r} is not implemented for {family}")
    bias = bool(d.get("attention_bias", False))
    return cls(
        family=family,
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        intermediate_size=int(d["intermediate_size"]),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(d["rms_norm_eps"]),
        gemma_norm=is_gemma,
        activation="gelu_tanh" if is_gemma else "silu",
        post_norms=is_gemma,
        qk_norm=family == "gemma3_text",
        qkv_bias=family == "qwen2" or bias,
        o_bias=bias,
        embed_scale=is_gemma,
        attn_scale=float(d["query_pre_attn_scalar"]) ** -0.5 if is_gemma else head_dim ** -0.5,
        attn_softcap=d.get("attn_logit_softcapping") if is_gemma else None,
        final_softcap=d.get("final_logit_softcapping") if is_gemma else None,
        layer_types=layer_types,
        sliding_window=d.get("sliding_window"),
        rope=_ropes(d, layer_types),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=_eos_ids(d.get("eos_token_id")),
        pad_token_id=d.get("pad_token_id"),
    )
