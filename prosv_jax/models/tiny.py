"""The built-in tiny model: a small Gemma-2-shaped decoder and BPE tokenizer made offline, cached in HF format.

It lets every command run on a fresh machine with no download. Its weights are random (its answers are noise);
it exists to exercise the whole pipeline, not to write well.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

from flax import nnx

from prosv_jax.models.sources import cache_root

BUILTIN_VOCAB = 512


def builtin_name(seed: int = 0) -> str:
    """The cache folder name, tied to everything the build depends on (config, vocabulary, tokenizer family, seed,
    the library versions that draw the weights), so a changed build never reuses a stale folder."""
    import flax
    import tokenizers

    key = json.dumps([builtin_hf_config(BUILTIN_VOCAB, {}).to_dict(), "gemma", seed, flax.__version__,
                      tokenizers.__version__, BUILD_VERSION], sort_keys=True, default=str)
    return "tiny-gemma2-random-" + hashlib.sha256(key.encode()).hexdigest()[:12]


BUILD_VERSION = 2  # bumped when the build itself changes


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
    from prosv_jax.models.hf_folder import save_tokenizer
    from prosv_jax.models.loading import save_model
    from prosv_jax.models.offline_tokenizers import builtin_tokenizer

    target = os.path.join(cache_root(), builtin_name(seed))
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    os.makedirs(cache_root(), exist_ok=True)
    tokenizer = builtin_tokenizer("gemma", vocab_size=BUILTIN_VOCAB)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    hf_config = builtin_hf_config(BUILTIN_VOCAB, special)
    model = Decoder(ModelConfig.from_hf(hf_config), rngs=nnx.Rngs(seed))
    staging = tempfile.mkdtemp(prefix="." + builtin_name(seed) + ".", dir=cache_root())
    try:
        save_model(model, hf_config, staging)
        save_tokenizer(tokenizer, staging)  # loads in transformers 4.x too
        shutil.rmtree(target, ignore_errors=True)  # an incomplete earlier build, if any
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
