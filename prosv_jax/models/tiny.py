"""The built-in tiny model: a small Gemma-2-shaped decoder and BPE tokenizer made offline, cached in HF format.

It lets every command run on a fresh machine with no download. Its weights are random (its answers are noise);
it exists to exercise the whole pipeline, not to write well.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from flax import nnx

BUILTIN_NAME = "tiny-gemma2-random-v1"
BUILTIN_VOCAB = 512


def cache_root() -> str:
    """Where prosv-jax caches what it builds: $PROSV_JAX_CACHE, else ~/.cache/prosv_jax."""
    return os.environ.get("PROSV_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prosv_jax")


def builtin_hf_config(vocab_size: int, special_ids: dict):
    import transformers

    return transformers.Gemma2Config(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=64, **special_ids)


def builtin_model_dir(seed: int = 0) -> str:
    """Path of the built-in model directory, building it (in about a second) if it is not cached yet.

    The directory is written under a temporary name and renamed, so a kill never leaves a half-written model.
    """
    from prosv_jax.models.config import ModelConfig
    from prosv_jax.models.decoder import Decoder
    from prosv_jax.models.loading import save_model
    from prosv_jax.tokenization import builtin_tokenizer

    target = os.path.join(cache_root(), BUILTIN_NAME)
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    os.makedirs(cache_root(), exist_ok=True)
    tokenizer = builtin_tokenizer("gemma", vocab_size=BUILTIN_VOCAB)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    hf_config = builtin_hf_config(BUILTIN_VOCAB, special)
    model = Decoder(ModelConfig.from_hf(hf_config), rngs=nnx.Rngs(seed))
    staging = tempfile.mkdtemp(prefix=BUILTIN_NAME + ".", dir=cache_root())
    try:
        save_model(model, hf_config, staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete earlier build, if any
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


SMALL_LM_NAME = "small-llama-chat-v1"


def small_lm_dir(**overrides) -> str:
    """Path of the small pretrained offline chat model, training it once (a few CPU minutes) if it is not cached.

    The default lives at `<cache_root()>/small-llama-chat-v1`; keyword overrides (`prosv_jax.small_lm.SmallLMSettings`
    fields, e.g. `steps=20` in tests) get their own directory, suffixed by a hash of the overrides. Training writes
    to a temporary directory that is renamed at the end, so a kill never leaves a half model behind.
    """
    import hashlib
    import json

    from prosv_jax.small_lm import SmallLMSettings, estimated_minutes, train_small_lm

    settings = SmallLMSettings(**overrides)  # validates the names
    name = SMALL_LM_NAME
    if overrides:
        key = json.dumps(dict(sorted(overrides.items())), sort_keys=True, default=str)
        name += "-" + hashlib.sha256(key.encode()).hexdigest()[:10]
    target = os.path.join(cache_root(), name)
    if os.path.isfile(os.path.join(target, "model.safetensors")) and os.path.isfile(
            os.path.join(target, "training_log.json")):
        return target
    print(f"training the small offline model once (~{estimated_minutes(settings)} minutes; cached at {target})...",
          flush=True)
    os.makedirs(cache_root(), exist_ok=True)
    return train_small_lm(target, **overrides)
