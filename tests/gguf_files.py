"""Writing llama.cpp-style GGUF files from tiny HF model folders: the inputs of the GGUF importer's tests.

`write_gguf` does what llama.cpp's `convert_hf_to_gguf.py` does for the four families prosv-jax imports (llama,
qwen2, gemma2, gemma3): the same metadata keys, the tensors under llama.cpp's names (from gguf-py's own
`TensorNameMap`, not from the importer's table), and llama.cpp's conversions applied -- Llama's query/key rows
permuted for its interleaved RoPE (`LlamaModel.permute`), every Gemma `*norm.weight` stored as w + 1 -- optionally
with the 2-D weights quantized (norms, biases and other 1-D tensors stay F32, as llama.cpp keeps them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

# HF model_type -> llama.cpp architecture
ARCHS = {"llama": "llama", "qwen2": "qwen2", "gemma2": "gemma2", "gemma3_text": "gemma3"}
_MODEL_ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gemma2": gguf.MODEL_ARCH.GEMMA2,
               "gemma3": gguf.MODEL_ARCH.GEMMA3}
Q = gguf.GGMLQuantizationType


def llama_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), verbatim in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _rope(config: dict) -> tuple[dict, dict | None]:
    """(global RoPE parameters, Gemma-3's local ones) of a transformers 5 config.json."""
    params = config.get("rope_parameters") or {"rope_type": "default", "rope_theta": config.get("rope_theta", 1e4)}
    if config["model_type"] == "gemma3_text":
        return params["full_attention"], params["sliding_attention"]
    return params, None


def _check_expressible(config: dict) -> None:
    """Refuses a tiny config whose values a GGUF cannot carry (llama.cpp hard-codes them), so a test never
    compares against a model that the file does not describe."""
    model_type = config["model_type"]
    rope, local = _rope(config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise ValueError(f"rope_type {rope['rope_type']!r} is written by llama.cpp as rope_freqs, not supported here")
    if model_type in ("gemma2", "gemma3_text"):
        layers = config["num_hidden_layers"]
        if config["query_pre_attn_scalar"] != config["head_dim"]:
            raise ValueError("llama.cpp scales Gemma queries by 1/sqrt(head_dim): query_pre_attn_scalar must be head_dim")
        if model_type == "gemma2":
            expected = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
            if rope.get("rope_theta") != 10000.0:
                raise ValueError("llama.cpp writes no rope.freq_base for Gemma-2 (10000 is assumed)")
        else:
            expected = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
            if local.get("rope_theta") != 10000.0 or local.get("rope_type", "default") != "default":
                raise ValueError("llama.cpp's Gemma-3 local RoPE is the default one with base 10000")
        if config.get("layer_types") not in (None, expected):
            raise ValueError(f"llama.cpp's layer pattern is {expected}, the config has {config['layer_types']}")


def _metadata(writer: gguf.GGUFWriter, config: dict, arch: str, file_type: int) -> None:
    """The model's hyper-parameters, as convert_hf_to_gguf.py's `set_gguf_parameters` of the family writes them."""
    model_type = config["model_type"]
    rope, _ = _rope(config)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    if model_type != "gemma2":  # Gemma2Model.set_gguf_parameters writes no RoPE base (llama.cpp assumes 10000)
        writer.add_rope_freq_base(rope["rope_theta"])
    if model_type == "llama":  # LlamaModel adds these two
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)
    if rope.get("rope_type", "default") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    if model_type in ("gemma2", "gemma3_text"):
        writer.add_sliding_window(config["sliding_window"])
    if model_type == "gemma2":
        writer.add_attn_logit_softcapping(config["attn_logit_softcapping"])
        writer.add_final_logit_softcapping(config["final_logit_softcapping"])


def _tokenizer(writer: gguf.GGUFWriter, hf_dir: Path, config: dict) -> None:
    """A byte-level BPE tokenizer.json as llama.cpp's `_set_vocab_gpt2` + `SpecialVocab` write it."""
    with open(hf_dir / "tokenizer.json") as f:
        data = json.load(f)
    with open(hf_dir / "tokenizer_config.json") as f:
        tok_config = json.load(f)
    vocab = data["model"]["vocab"]
    special = {t["content"] for t in data["added_tokens"] if t.get("special")}
    tokens = [None] * config["vocab_size"]
    for token, index in vocab.items():
        tokens[index] = token
    for index in range(len(tokens)):  # a model vocabulary larger than the tokenizer's is padded as llama.cpp does
        if tokens[index] is None:
            tokens[index] = f"[PAD{index}]"
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.USER_DEFINED if t.startswith("[PAD")
             else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    for name, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("pad_token_id", writer.add_pad_token_id)):
        if config.get(name) is not None:
            add(config[name])
    # SpecialVocab reads add_bos_token from the tokenizer's post-processor (a template that prepends BOS).
    post = json.dumps(data.get("post_processor"))
    writer.add_add_bos_token(config.get("bos_token_id") is not None and '"TemplateProcessing"' in post)
    template = tok_config.get("chat_template")
    if template is None and (hf_dir / "chat_template.jinja").is_file():  # where transformers 5 saves it
        template = (hf_dir / "chat_template.jinja").read_text()
    if template:
        writer.add_chat_template(template)


def _store(writer: gguf.GGUFWriter, name: str, weight: np.ndarray, qtype) -> None:
    if qtype in (None, Q.F32):
        writer.add_tensor(name, np.ascontiguousarray(weight, np.float32))
        return
    if qtype == Q.F16:
        writer.add_tensor(name, np.ascontiguousarray(weight, np.float16))
        return
    try:
        data = gguf.quants.quantize(np.ascontiguousarray(weight, np.float32), qtype)
    except (NotImplementedError, gguf.quants.QuantError):  # a type gguf-py cannot write: right-sized bytes (the importer must refuse it)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        data = np.zeros((*weight.shape[:-1], weight.shape[-1] // block * size), np.uint8)
    writer.add_tensor(name, data, raw_dtype=qtype)


def write_gguf(hf_dir, path, *, qtype=None, arch: str | None = None, tensor_types: dict | None = None) -> Path:
    """Writes the model of the HF folder `hf_dir` (config.json, model.safetensors, tokenizer.json) to `path`.

    qtype: None / F32 for a float32 file, or a type such as `Q.Q8_0` for every 2-D weight (norms and biases stay
    F32, as in llama.cpp). arch: a `general.architecture` to write instead of the family's (bad-input tests).
    tensor_types: {llama.cpp tensor name: type} for single tensors (a type gguf-py cannot quantize is written as
    zero bytes of the right size).
    """
    hf_dir, path = Path(hf_dir), Path(path)
    with open(hf_dir / "config.json") as f:
        config = json.load(f)
    model_type = config["model_type"]
    _check_expressible(config)
    llama_arch = ARCHS[model_type]
    writer = gguf.GGUFWriter(os.fspath(path), arch or llama_arch)
    writer.add_name(f"tiny-{model_type}")
    file_type = gguf.LlamaFileType.ALL_F32 if qtype in (None, Q.F32) else getattr(gguf.LlamaFileType, f"MOSTLY_{qtype.name}")
    _metadata(writer, config, arch or llama_arch, file_type)
    _tokenizer(writer, hf_dir, config)
    names = gguf.get_tensor_name_map(_MODEL_ARCH[llama_arch], config["num_hidden_layers"])
    gemma = model_type in ("gemma2", "gemma3_text")
    tensors = load_file(hf_dir / "model.safetensors")
    for hf_name, weight in tensors.items():
        weight = weight.astype(np.float32)
        if config.get("tie_word_embeddings") and hf_name == "lm_head.weight":
            continue  # llama.cpp writes no output.weight for tied embeddings
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no llama.cpp name for {hf_name}")
        if model_type == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name):
            kv = config["num_attention_heads"] if ".q_proj." in hf_name else config["num_key_value_heads"]
            weight = llama_permute(weight, config["num_attention_heads"], kv)
        if gemma and hf_name.endswith("norm.weight"):
            weight = weight + np.float32(1.0)
        kind = (tensor_types or {}).get(name, qtype if weight.ndim == 2 else None)
        _store(writer, name, weight, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
