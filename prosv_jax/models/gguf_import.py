"""Import of llama.cpp GGUF checkpoints as standard HF model folders (config, safetensors, tokenizer).

A GGUF file holds quantized weights under llama.cpp's names, after llama.cpp's conversions: Llama's query and key
rows are permuted for its interleaved RoPE, and Gemma's RMSNorm weights are stored as 1 + w. This module
dequantizes every tensor with the `gguf` package (ggml's own reader), undoes those conversions, rebuilds the
transformers config and tokenizer from the metadata, and writes the folder transformers itself would have written,
so every prosv-jax command and transformers load it. No torch is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from prosv_jax.models.gguf_metadata import GGUFError, gguf_tokenizer, hf_config_dict, read_gguf
from prosv_jax.models.hf_folder import save_tokenizer, write_generation_config, write_hf_config
from prosv_jax.models.safetensors_io import save_checkpoint

SOURCE_FILE = "gguf_source.json"  # what was converted, and the size of every file written beside it

# llama.cpp name below "blk.N." -> HF name below "model.layers.N.", per family where they differ.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Llama's ffn_norm precedes the MLP and is HF's post_attention_layernorm; Gemma has a separate pre-FFN norm.
_FFN_NORM = {"llama": "post_attention_layernorm", "qwen2": "post_attention_layernorm",
             "gemma2": "pre_feedforward_layernorm", "gemma3_text": "pre_feedforward_layernorm"}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def hf_tensor_name(gguf_name: str, model_type: str) -> str:
    """The HF name of a llama.cpp tensor name, e.g. `blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[3] in ("weight", "bias"):
        inner = _FFN_NORM[model_type] if parts[2] == "ffn_norm" else _BLOCK_NAMES.get(parts[2])
        if inner is not None:
            return f"model.layers.{parts[1]}.{inner}.{parts[3]}"
    raise GGUFError(f"GGUF tensor {gguf_name!r} has no counterpart in a {model_type} model; prosv-jax cannot import it")


def _unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Llama Q/K permutation: per head, interleaved rotary pairs back to HF's two halves."""
    rest = weight.shape[1:]
    # [N*D, ...] -> [N, D/2, 2, ...] (llama.cpp's pairs) -> swap to HF's [N, 2, D/2, ...] -> [N*D, ...]
    return weight.reshape(num_heads, weight.shape[0] // num_heads // 2, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def undo_llama_cpp(hf_name: str, weight: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Undoes llama.cpp's conversion of one tensor (already dequantized, in HF's [out, in] layout)."""
    model_type = config["model_type"]
    if model_type == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name):
        heads = config["num_attention_heads"] if ".q_proj." in hf_name else config["num_key_value_heads"]
        return _unpermute_rows(weight, heads)
    if model_type in ("gemma2", "gemma3_text") and hf_name.endswith("norm.weight"):
        return weight - np.float32(1.0)  # llama.cpp stores Gemma's (1 + w) RMSNorm scale as 1 + w
    return weight


def gguf_tensors(gguf_file, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every tensor of the file, dequantized to float32, under its HF name and with llama.cpp's conversions undone."""
    import gguf

    out = {}
    for tensor in gguf_file.tensors:
        name = hf_tensor_name(tensor.name, config["model_type"])
        weight = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        expected = tuple(int(d) for d in reversed(tensor.shape))  # ggml lists the fastest axis first
        if weight.shape != expected:
            weight = weight.reshape(expected)
        out[name] = undo_llama_cpp(name, weight, config)
    return out


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 chat_template: str | None = None, source: dict | None = None) -> str:
    """Writes the HF folder of a GGUF file to `out_dir` (atomically: a kill never leaves a half folder).

    `chat_template` is used when the file has none; `source` is recorded in `gguf_source.json` beside the weights.
    """
    gguf_path, out_dir = os.fspath(gguf_path), os.path.abspath(os.fspath(out_dir))
    gguf_file = read_gguf(gguf_path)
    config = hf_config_dict(gguf_file)
    tensors = gguf_tensors(gguf_file, config)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-" + os.path.basename(out_dir) + "-", dir=parent)
    try:
        write_hf_config(config, staging)
        save_checkpoint(tensors, staging)
        tokenizer = gguf_tokenizer(gguf_file, chat_template)
        save_tokenizer(tokenizer, staging)
        write_generation_config(config, tokenizer, staging)
        files = {name: os.path.getsize(os.path.join(staging, name)) for name in sorted(os.listdir(staging))}
        with open(os.path.join(staging, SOURCE_FILE), "w") as f:  # written last: the record of a whole folder
            json.dump({"gguf": os.path.abspath(gguf_path), "files": files, **(source or {})}, f, indent=2,
                      sort_keys=True)
        os.chmod(staging, 0o755)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
