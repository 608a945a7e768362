"""Loading HF checkpoints into the decoder (straight into the target dtype and sharding) and saving them back.

Each weight of the decoder has one HF tensor and a layout change between them (HF linears are [out, in]; the
decoder keeps heads as their own axis). Loading cuts every device's shard out of a memory map, so no device and
no host buffer ever holds more than one tensor's shard beyond what it keeps.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prosv_jax.models.config import ModelConfig
from prosv_jax.models.decoder import Decoder
from prosv_jax.models.hf_folder import add_transformers4_fields
from prosv_jax.models.safetensors_io import CheckpointError, open_checkpoint, save_checkpoint
from prosv_jax.models.sharding import ShardingRules, weight_sharding

# Layout changes, each a pair (HF array -> decoder array, decoder array -> HF array), views where possible.
_Layout = tuple[Callable[[np.ndarray, tuple], np.ndarray], Callable[[np.ndarray], np.ndarray]]
_SAME: _Layout = (lambda a, shape: a, lambda a: a)
_TRANSPOSE: _Layout = (lambda a, shape: a.T, lambda a: a.T)  # [out, in] <-> [in, out]
# q/k/v: HF [N*D, d] -> reshape [N, D, d] -> transpose to [d, N, D]
_HEADS_IN: _Layout = (lambda a, shape: a.reshape(shape[1], shape[2], shape[0]).transpose(2, 0, 1),
                      lambda a: a.transpose(1, 2, 0).reshape(-1, a.shape[0]))
# o: HF [d, H*D] -> reshape [d, H, D] -> transpose to [H, D, d]
_HEADS_OUT: _Layout = (lambda a, shape: a.reshape(shape[2], shape[0], shape[1]).transpose(1, 2, 0),
                       lambda a: a.transpose(2, 0, 1).reshape(a.shape[2], -1))
# q/k/v biases: HF [N*D] -> [N, D]
_BIAS_HEADS: _Layout = (lambda a, shape: a.reshape(shape), lambda a: a.reshape(-1))


def _layer_names(cfg: ModelConfig) -> dict[tuple, tuple[str, _Layout]]:
    """Decoder path (below layers.i) -> (HF name below model.layers.i, layout)."""
    names = {
        ("pre_attn_norm", "scale"): ("input_layernorm.weight", _SAME),
        ("attn", "q"): ("self_attn.q_proj.weight", _HEADS_IN),
        ("attn", "k"): ("self_attn.k_proj.weight", _HEADS_IN),
        ("attn", "v"): ("self_attn.v_proj.weight", _HEADS_IN),
        ("attn", "o"): ("self_attn.o_proj.weight", _HEADS_OUT),
        ("attn", "q_bias"): ("self_attn.q_proj.bias", _BIAS_HEADS),
        ("attn", "k_bias"): ("self_attn.k_proj.bias", _BIAS_HEADS),
        ("attn", "v_bias"): ("self_attn.v_proj.bias", _BIAS_HEADS),
        ("attn", "o_bias"): ("self_attn.o_proj.bias", _SAME),
        ("attn", "q_norm", "scale"): ("self_attn.q_norm.weight", _SAME),
        ("attn", "k_norm", "scale"): ("self_attn.k_norm.weight", _SAME),
        ("mlp", "gate"): ("mlp.gate_proj.weight", _TRANSPOSE),
        ("mlp", "up"): ("mlp.up_proj.weight", _TRANSPOSE),
        ("mlp", "down"): ("mlp.down_proj.weight", _TRANSPOSE),
    }
    if cfg.post_norms:  # Gemma's "post_attention_layernorm" follows attention; Llama's precedes the MLP
        names[("post_attn_norm", "scale")] = ("post_attention_layernorm.weight", _SAME)
        names[("pre_ffn_norm", "scale")] = ("pre_feedforward_layernorm.weight", _SAME)
        names[("post_ffn_norm", "scale")] = ("post_feedforward_layernorm.weight", _SAME)
    else:
        names[("pre_ffn_norm", "scale")] = ("post_attention_layernorm.weight", _SAME)
    return names


def hf_name(cfg: ModelConfig, path: tuple) -> tuple[str, _Layout]:
    """The HF tensor name and layout of the decoder weight at `path` (a path in the decoder's nnx state)."""
    top = {("embedding",): ("model.embed_tokens.weight", _SAME), ("final_norm", "scale"): ("model.norm.weight", _SAME),
           ("lm_head",): ("lm_head.weight", _TRANSPOSE)}
    if path in top:
        return top[path]
    if path[0] == "layers":
        name, layout = _layer_names(cfg)[tuple(path[2:])]
        return f"model.layers.{path[1]}.{name}", layout
    raise KeyError(f"no HF name for decoder weight {path}")


def abstract_model(cfg: ModelConfig, dtype=jnp.float32):
    """(graphdef, abstract flat state) of the decoder: shapes and dtypes only, nothing allocated."""
    model = nnx.eval_shape(lambda: Decoder(cfg, dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_flat_state(state)


def _expected_hf_shape(layout: _Layout, shape: tuple) -> tuple:
    return layout[1](np.empty(shape, np.int8)).shape


def load_model(model_dir: str | os.PathLike, dtype=jnp.float32, *, mesh: jax.sharding.Mesh | None = None,
               rules: ShardingRules = ShardingRules(), ignore_fields: tuple[str, ...] = ()) -> Decoder:
    """Loads a local HF model directory (config.json + safetensors) into a Decoder of `dtype`.

    With a mesh, each weight is placed by the sharding rules and each device reads only its own shard.
    """
    cfg = ModelConfig.from_pretrained(model_dir, ignore_fields)
    tensors = open_checkpoint(model_dir)
    graphdef, flat = abstract_model(cfg, dtype)
    tied_duplicate = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    needed = {path: hf_name(cfg, path) for path, _ in flat}
    missing = sorted(name for name, _ in needed.values() if name not in tensors)
    unexpected = sorted(set(tensors) - {name for name, _ in needed.values()} - tied_duplicate)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {model_dir} does not match its config.json: "
            + (f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}; " if missing else "")
            + (f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}" if unexpected else "")
            + " (is config.json from the same model?)")
    leaves = []
    for path, abstract in flat:
        name, layout = needed[path]
        shape = tuple(abstract.shape)
        source = tensors[name]
        expected = _expected_hf_shape(layout, shape)
        if source.shape != expected:
            raise CheckpointError(
                f"tensor {name!r} has shape {source.shape} but config.json implies {expected}")
        view = layout[0](source, shape)
        sharding = weight_sharding(path[-1], shape, mesh, rules)
        target = np.dtype(dtype)
        array = jax.make_array_from_callback(shape, sharding, lambda index, v=view: np.asarray(v[index], target))
        leaves.append(array)
    state = nnx.from_flat_state([(path, abstract.replace(value)) for (path, abstract), value in zip(flat, leaves)])
    return nnx.merge(graphdef, state)


def hf_tensors(model: Decoder) -> dict[str, np.ndarray]:
    """The model's weights under their HF names and layouts (host numpy arrays)."""
    _, state = nnx.split(model)
    out = {}
    for path, variable in nnx.to_flat_state(state):
        name, layout = hf_name(model.cfg, path)
        out[name] = np.ascontiguousarray(layout[1](np.asarray(jax.device_get(variable[...]))))
    return out


def save_model(model: Decoder, hf_config, model_dir: str | os.PathLike, *,
               ignore_fields: tuple[str, ...] = ()) -> None:
    """Saves the model in HF format (config.json + model.safetensors) loadable by transformers and `load_model`.

    `hf_config` is the transformers config the model was built from; it is written as config.json.
    `ignore_fields` as in `load_model` (needed for a config that was loaded with it).
    """
    os.makedirs(model_dir, exist_ok=True)
    if ModelConfig.from_hf(hf_config, ignore_fields) != model.cfg:
        raise ValueError("hf_config does not describe this model (its ModelConfig differs)")
    hf_config.save_pretrained(model_dir)
    add_transformers4_fields(model_dir)  # so transformers 4.x reads the same RoPE settings
    save_checkpoint(hf_tensors(model), model_dir)
