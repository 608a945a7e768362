"""Tiny random transformers (PyTorch) models saved in HF format: the references every parity test compares with.

Weights are re-drawn at a scale where logits are O(1) and biases and norm weights are non-trivial, so a missing
bias, a wrong norm convention or a swapped layout shows up far above the tolerance.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

from prosv_jax.models import offline_tokenizers as tokenization

VOCAB = 320  # >= 256 bytes + special tokens, so the family tokenizers fit

# name -> (config class, model class, tokenizer family, config kwargs). Each flag of the decoder is covered.
CONFIGS = {
    "llama_gqa_untied": (transformers.LlamaConfig, transformers.LlamaForCausalLM, "llama3", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=False, rope_theta=10000.0)),
    "llama3_rope_mqa_tied_headdim": (transformers.LlamaConfig, transformers.LlamaForCausalLM, "llama3", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
        head_dim=24, tie_word_embeddings=True, max_position_embeddings=256,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16))),
    "llama_linear_rope_bias": (transformers.LlamaConfig, transformers.LlamaForCausalLM, "llama3", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        attention_bias=True, rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0))),
    "qwen2_bias_tied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, "qwen2", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=True, rope_theta=1000000.0)),
    "qwen2_sliding_untied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, "qwen2", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=False, use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    "gemma2_window": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM, "gemma", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, query_pre_attn_scalar=24, sliding_window=5, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0)),
    "gemma3_qknorm_ropes": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, "gemma", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
        rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
                         "full_attention": dict(rope_type="linear", rope_theta=1000000.0, factor=8.0)})),
}


def family_ids(family: str) -> dict:
    """bos/eos/pad ids of the offline tokenizer of a family (special tokens come first, so ids are fixed)."""
    spec = tokenization.family_tokens(family)
    index = {tok: i for i, tok in enumerate(spec.special_tokens)}
    return dict(bos_token_id=index.get(spec.bos) if spec.bos else None, eos_token_id=index[spec.eos],
                pad_token_id=index[spec.pad])


def _randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    gemma = "Gemma" in type(model).__name__
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name:  # Gemma scales by (1 + w), Llama by w
                param.copy_(0.2 * noise if gemma else 1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.3 * noise)
            else:
                param.copy_(0.15 * noise)


def build(name: str, directory, *, seed: int = 0, with_tokenizer: bool = True, **overrides):
    """Builds the named tiny model, saves it (and a family tokenizer) to `directory`; returns the torch model."""
    config_cls, model_cls, family, kwargs = CONFIGS[name]
    config = config_cls(vocab_size=VOCAB, **{**family_ids(family), **kwargs, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    _randomise(model, seed)
    model.save_pretrained(directory)
    if with_tokenizer:
        tokenization.builtin_tokenizer(family, vocab_size=VOCAB).save_pretrained(directory)
    return model


def hf_logits(model, tokens: np.ndarray, valid: np.ndarray, positions: np.ndarray, hidden: bool = False):
    """Float32 logits (and hidden states) of the torch model on a padded batch with explicit positions."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64)),
                    position_ids=torch.tensor(positions), output_hidden_states=hidden)
    if hidden:
        return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]
    return out.logits.float().numpy()
