"""Writing HF model folders that transformers 4.x and 5.x both load as the same model.

transformers 5 writes RoPE settings only under `rope_parameters` and names its tokenizer class `TokenizersBackend`;
transformers 4.x ignores the first (it would silently use rope_theta = 10000) and cannot load the second. Folders
written here carry both spellings of the RoPE fields and the tokenizer class name both versions know.
"""

from __future__ import annotations

import json
import os
from typing import Any

TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # known to transformers 4.x and 5.x alike


def transformers4_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The RoPE fields transformers 4.x reads instead of `rope_parameters` (rope_theta, rope_scaling, Gemma-3's
    rope_local_base_freq), with the values `rope_parameters` holds."""
    params = config.get("rope_parameters") or {}
    fields: dict[str, Any] = {}
    if config.get("model_type") == "gemma3_text":
        full, local = params.get("full_attention", {}), params.get("sliding_attention", {})
        fields["rope_local_base_freq"] = local.get("rope_theta")
        if config.get("layer_types"):
            fields["sliding_window_pattern"] = _sliding_pattern(config["layer_types"])
    else:
        full = params
    fields["rope_theta"] = full.get("rope_theta")
    rope_type = full.get("rope_type", "default")
    if rope_type != "default":
        fields["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
    return fields


def _sliding_pattern(layer_types: list[str]) -> int | None:
    """Gemma-3's period of local blocks plus one global block, or None if the layer types are not periodic."""
    if "full_attention" not in layer_types:
        return None
    period = layer_types.index("full_attention") + 1
    periodic = all((t == "full_attention") == ((i + 1) % period == 0) for i, t in enumerate(layer_types))
    return period if periodic else None


def write_hf_config(config: dict[str, Any], model_dir: str) -> None:
    """Writes config.json through transformers (which validates it), plus the 4.x spellings of the RoPE fields."""
    import transformers

    data = dict(config)
    model_type = data.pop("model_type")
    transformers.AutoConfig.for_model(model_type, **data).save_pretrained(model_dir)
    add_transformers4_fields(model_dir)


def add_transformers4_fields(model_dir: str) -> None:
    """Adds the 4.x RoPE fields to a config.json written by transformers 5 (no-op where they are already there)."""
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        data = json.load(f)
    data.update({k: v for k, v in transformers4_fields(data).items() if v is not None})
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def save_tokenizer(tokenizer, model_dir: str) -> None:
    """`tokenizer.save_pretrained`, with a tokenizer class and chat template that transformers 4.x reads too."""
    tokenizer.save_pretrained(model_dir)
    path = os.path.join(model_dir, "tokenizer_config.json")
    with open(path) as f:
        data = json.load(f)
    data["tokenizer_class"] = TOKENIZER_CLASS
    if tokenizer.chat_template is not None:
        data["chat_template"] = tokenizer.chat_template  # 4.x before 4.43 reads it only from here
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def write_generation_config(config: dict[str, Any], tokenizer, model_dir: str) -> None:
    """generation_config.json: the special ids, with every end-of-turn marker of the vocabulary as a stop token
    beside EOS."""
    from prosv_jax.inference.prompts import END_OF_TURN_TOKENS

    vocab = tokenizer.get_vocab()
    eos = [config["eos_token_id"]] if config.get("eos_token_id") is not None else []
    eos += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] not in eos]
    data = {"bos_token_id": config.get("bos_token_id"), "eos_token_id": eos if len(eos) != 1 else eos[0],
            "pad_token_id": config.get("pad_token_id"), "_from_model_config": False}
    with open(os.path.join(model_dir, "generation_config.json"), "w") as f:
        json.dump({k: v for k, v in data.items() if v is not None}, f, indent=2, sort_keys=True)
        f.write("\n")
