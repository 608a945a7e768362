"""The small offline chat model: training reduces the loss, the saved directory is a real HF model, builds are
atomic, and the cached model is reused. Tiny settings keep this file fast."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from prosv_jax import small_lm
from prosv_jax.tokenization import LLAMA3_CHAT_TEMPLATE

TINY = dict(vocab_size=320, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
            seq_len=64, batch_size=8, steps=20, lr=1e-2, warmup_steps=3, max_conversations=120)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return small_lm.train_small_lm(str(tmp_path_factory.mktemp("small") / "model"), progress=False, **TINY)


def test_bundled_corpus():
    pairs = small_lm.alpaca_gpt4_pairs()
    rows = small_lm.axbench_concept10_rows()
    assert len(pairs) == 805 and set(pairs[0]) == {"instruction", "output"}
    assert len(rows) == 936 and set(rows[0]) == {"input", "output", "output_concept", "concept_id"}
    assert rows[0]["concept_id"] == -1 and rows[-1]["concept_id"] == 9
    assert len(small_lm.chat_conversations()) == 805 + 936


def test_conversation_encoding_matches_chat_template():
    from prosv_jax.tokenization import build_bpe_tokenizer

    pairs = small_lm.chat_conversations()[:40]
    tokenizer = build_bpe_tokenizer([t for p in pairs for t in p], 300, "llama3")
    docs = small_lm._encode_conversations(tokenizer, pairs[:3])
    for (user, answer), doc in zip(pairs, docs):
        expected = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], tokenize=True,
            return_dict=False)
        assert doc.tolist() == list(expected)
        assert doc[0] == tokenizer.bos_token_id and doc[-1] == tokenizer.convert_tokens_to_ids("<|eot_id|>")


def test_loss_decreases_and_log(tiny_dir):
    with open(os.path.join(tiny_dir, "training_log.json")) as f:
        log = json.load(f)
    losses = log["loss"]
    assert len(losses) == TINY["steps"] and all(np.isfinite(losses))
    assert abs(losses[0] - np.log(TINY["vocab_size"])) < 0.3  # starts near uniform
    assert losses[-1] < losses[0] - 0.7, losses
    assert log["settings"]["hidden_size"] == 64 and log["wall_seconds"] > 0
    assert log["eval_conversations"] == 12 and np.isfinite(log["eval_loss"]) and log["eval_loss"] < losses[0]
    assert not [n for n in os.listdir(os.path.dirname(tiny_dir)) if ".tmp." in n]


def test_saved_model_loads_in_jax_and_transformers(tiny_dir):
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prosv_jax.models.decoder import positions_from_valid
    from prosv_jax.models.loading import load_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert tokenizer.chat_template == LLAMA3_CHAT_TEMPLATE
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token == "<|eot_id|>"

    model = load_model(tiny_dir)
    assert model.cfg.family == "llama" and model.cfg.tie_word_embeddings and model.cfg.hidden_size == 64
    tokens = jnp.asarray([ids], jnp.int32)
    valid = jnp.ones(tokens.shape, bool)
    ours = np.asarray(model(tokens, positions_from_valid(valid), valid).logits)

    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "model"

    def boom(step, loss):
        if step == 2:
            raise RuntimeError("killed mid-training")

    with pytest.raises(RuntimeError, match="mid-training"):
        small_lm.train_small_lm(str(out), progress=False, callback=boom, **{**TINY, "steps": 5})
    assert not out.exists() and os.listdir(tmp_path) == []

    # a failure while writing (after some files exist in the staging directory) also leaves nothing behind
    import prosv_jax.models.loading as loading

    def half_save(model, hf_config, model_dir, **kwargs):
        hf_config.save_pretrained(model_dir)
        raise OSError("disk full")

    monkeypatch.setattr(loading, "save_model", half_save)
    with pytest.raises(OSError, match="disk full"):
        small_lm.train_small_lm(str(out), progress=False, **{**TINY, "steps": 2})
    assert not out.exists() and os.listdir(tmp_path) == []


def test_refuses_to_replace_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing"):
        small_lm.train_small_lm(str(tmp_path), progress=False, **TINY)


def test_small_lm_dir_is_cached(tmp_path, monkeypatch, capsys):
    from prosv_jax import builtin

    monkeypatch.setenv("PROSV_JAX_CACHE", str(tmp_path))
    settings = {**TINY, "steps": 3}
    first = builtin.small_lm_dir(**settings)
    assert "training the small offline model once" in capsys.readouterr().out
    assert os.path.dirname(first) == str(tmp_path)
    assert os.path.basename(first).startswith(builtin.SMALL_LM_NAME + "-")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model was trained again")

    monkeypatch.setattr(small_lm, "train_small_lm", no_training)
    assert builtin.small_lm_dir(**settings) == first
    assert capsys.readouterr().out == ""
    assert builtin.small_lm_dir.__module__ == "prosv_jax.builtin"
    with pytest.raises(TypeError):
        builtin.small_lm_dir(not_a_setting=1)


def test_default_cache_name(monkeypatch, tmp_path):
    from prosv_jax import builtin

    monkeypatch.setenv("PROSV_JAX_CACHE", str(tmp_path))
    os.makedirs(tmp_path / builtin.SMALL_LM_NAME)
    for name in ("model.safetensors", "training_log.json"):
        (tmp_path / builtin.SMALL_LM_NAME / name).write_text("")
    assert builtin.small_lm_dir() == str(tmp_path / builtin.SMALL_LM_NAME)
