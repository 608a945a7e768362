"""Reading a GGUF file's header: the checks, the transformers config and the tokenizer it describes.

llama.cpp's metadata keys (`<arch>.embedding_length`, `tokenizer.ggml.tokens`, ...) are translated into the config
dict transformers would build; where llama.cpp hard-codes a value instead of storing it (Gemma's sliding-window
pattern and local RoPE base, Gemma-2's query scale), the same rule as llama.cpp's is applied here.
"""

from __future__ import annotations

import json
import os
from typing import Any

# llama.cpp architecture -> HF model_type. Anything else is refused by name.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma2": "gemma2", "gemma3": "gemma3_text"}
# The classic llama.cpp types, whose dequantization is checked against transformers' here; others are refused.
SUPPORTED_QUANT_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                         "Q5_K", "Q6_K")


class GGUFError(ValueError):
    """A GGUF file prosv-jax cannot import (corrupt, truncated, unsupported architecture or quantization)."""


def read_gguf(path: str | os.PathLike):
    """The file's `gguf.GGUFReader`, after checking that it is whole and that every tensor type is supported."""
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GGUFError(f"GGUF file {path} not found")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, IndexError, struct.error, ... on a cut file
        raise GGUFError(f"GGUF file {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise GGUFError(f"GGUF architecture {arch!r} of {path} is not supported; supported: "
                        f"{', '.join(GGUF_ARCHITECTURES)}")
    unsupported = sorted({t.tensor_type.name for t in reader.tensors} - set(SUPPORTED_QUANT_TYPES))
    if unsupported:
        raise GGUFError(f"{path} uses quantization type(s) {unsupported}, which prosv-jax does not dequantize; "
                        f"supported: {', '.join(SUPPORTED_QUANT_TYPES)}")
    return reader


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _required(reader, key: str) -> Any:
    value = _field(reader, key)
    if value is None:
        raise GGUFError(f"GGUF metadata key {key!r} is missing; the file cannot be imported without it")
    return value


def hf_config_dict(reader) -> dict[str, Any]:
    """The transformers config dict (transformers 5 layout) of the model in the file."""
    arch = _field(reader, "general.architecture")
    model_type = GGUF_ARCHITECTURES[arch]
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise GGUFError("the GGUF file carries llama.cpp's rope_freqs (Llama-3.1-style RoPE scaling), which prosv-jax "
                        "cannot translate back into rope_parameters")
    hidden, heads = int(_required(reader, f"{arch}.embedding_length")), int(_required(reader, f"{arch}.attention.head_count"))
    layers = int(_required(reader, f"{arch}.block_count"))
    head_dim = int(_field(reader, f"{arch}.attention.key_length") or hidden // heads)
    rope_dims = _field(reader, f"{arch}.rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != head_dim:
        raise GGUFError(f"partial RoPE ({rope_dims} of {head_dim} dimensions) is not implemented")
    tokens = _required(reader, "tokenizer.ggml.tokens")
    config: dict[str, Any] = dict(
        model_type=model_type,
        vocab_size=int(_field(reader, f"{arch}.vocab_size") or len(tokens)),
        hidden_size=hidden,
        intermediate_size=int(_required(reader, f"{arch}.feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, f"{arch}.attention.head_count_kv") or heads),
        head_dim=head_dim,
        rms_norm_eps=float(_required(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(_field(reader, f"{arch}.context_length") or 8192),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )
    # llama.cpp's default base when the key is absent is 10000 for every family here.
    global_rope = _rope(reader, arch, float(_field(reader, f"{arch}.rope.freq_base", 10000.0)))
    if model_type in ("llama", "qwen2"):
        bias = "blk.0.attn_q.bias" in names
        config.update(hidden_act="silu", rope_parameters=global_rope)
        if model_type == "llama":
            config.update(attention_bias=bias, mlp_bias=False)
        elif not bias:
            raise GGUFError("a qwen2 GGUF without query/key/value biases is not a Qwen2 model")
        return config
    # Gemma: llama.cpp scales queries by 1/sqrt(d/H) for the 27B models and by 1/sqrt(head_dim) otherwise.
    is_27b = layers == (46 if model_type == "gemma2" else 62)
    window = int(_required(reader, f"{arch}.attention.sliding_window"))
    config.update(hidden_activation="gelu_pytorch_tanh", sliding_window=window, attention_bias=False,
                  query_pre_attn_scalar=hidden // heads if is_27b else head_dim)
    if model_type == "gemma2":  # even blocks are sliding-window blocks
        config.update(layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
                      attn_logit_softcapping=_field(reader, f"{arch}.attn_logit_softcapping"),
                      final_logit_softcapping=_field(reader, f"{arch}.final_logit_softcapping"),
                      rope_parameters=global_rope)
        return config
    pattern = int(_field(reader, f"{arch}.attention.sliding_window_pattern") or 6)  # llama.cpp's default: 5 local, 1 global
    local_base = float(_field(reader, f"{arch}.rope.freq_base_swa") or 10000.0)
    config.update(layer_types=["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)],
                  attn_logit_softcapping=None, final_logit_softcapping=None,
                  rope_parameters={"full_attention": global_rope,
                                   "sliding_attention": {"rope_type": "default", "rope_theta": local_base}})
    return config


def _rope(reader, arch: str, theta: float) -> dict[str, Any]:
    scaling = _field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling == "none":
        return {"rope_type": "default", "rope_theta": theta}
    if scaling == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": float(_required(reader, f"{arch}.rope.scaling.factor"))}
    raise GGUFError(f"RoPE scaling type {scaling!r} is not implemented (supported: none, linear)")


def gguf_tokenizer(reader, chat_template: str | None = None):
    """The file's tokenizer as a transformers fast tokenizer, built by transformers' own GGUF converters.

    The metadata is read here with `gguf` (transformers' reader needs torch) into the dict those converters take.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    groups = {}
    for group, renames in GGUF_TOKENIZER_MAPPING.items():
        groups[group] = {name: _field(reader, f"tokenizer.{key}") for key, name in renames.items()
                         if f"tokenizer.{key}" in reader.fields}
    tokenizer_dict, kwargs = groups["tokenizer"], groups["tokenizer_config"]
    if tokenizer_dict.get("tokenizer_type") == "llama":
        kwargs.setdefault("add_bos_token", True)  # llama.cpp adds BOS to a sentencepiece vocabulary by default
    tokens = tokenizer_dict["tokens"]
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unk_token_id"),
                      ("pad_token", "pad_token_id")):
        index = tokenizer_dict.get(key)
        kwargs[name] = tokens[index] if index is not None else None
    if kwargs.get("chat_template") is None:
        kwargs.pop("chat_template", None)
        if chat_template is not None:
            kwargs["chat_template"] = chat_template
    backend, extra = convert_gguf_tokenizer(_field(reader, "general.architecture"), tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=_within_vocabulary(backend, len(tokens)), **kwargs, **extra)


def _within_vocabulary(backend, size: int):
    """The backend without the tokens transformers' builders add that the file does not list (a byte-level
    vocabulary without `<|endoftext|>` gets one at id `size`, past the model's embedding rows)."""
    from tokenizers import Tokenizer

    data = json.loads(backend.to_str())
    kept = [t for t in data["added_tokens"] if t["id"] < size]
    if len(kept) == len(data["added_tokens"]):
        return backend
    data["added_tokens"] = kept
    return Tokenizer.from_str(json.dumps(data))
