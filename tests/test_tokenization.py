"""Offline family tokenizers: exact chat templates, one BOS, single-id special tokens, save/reload round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from prosv_jax.models import offline_tokenizers as tk

HI = [{"role": "user", "content": "Hi there"}]

EXPECTED_PROMPT = {
    "gemma": "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "qwen2": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    ),
}


def _ids(encoded) -> list[int]:
    """apply_chat_template(tokenize=True) returns a BatchEncoding in transformers 5, a list in older versions."""
    if hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return tk.builtin_corpus()


@pytest.fixture(scope="module", params=tk.FAMILIES)
def family_pair(request, corpus, tmp_path_factory):
    """(family, freshly built tokenizer, the same tokenizer reloaded from disk with AutoTokenizer)."""
    family = request.param
    built = tk.build_bpe_tokenizer(corpus, vocab_size=512, family=family)
    path = tmp_path_factory.mktemp(f"tok_{family}")
    built.save_pretrained(path)
    reloaded = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return family, built, reloaded


def test_builtin_corpus_is_the_alpaca_eval_instructions(corpus):
    assert len(corpus) == 805
    assert all(isinstance(s, str) and s for s in corpus)
    assert corpus[0] == "What are the names of some famous actors that started their careers on Broadway?"


def test_vocab_size_and_special_token_ids(family_pair):
    family, built, reloaded = family_pair
    spec = tk.family_tokens(family)
    for tok in (built, reloaded):
        assert len(tok) == 512
        # Special tokens come first, with deterministic ids 0..k-1, and each encodes to one id.
        assert tok.convert_tokens_to_ids(list(spec.special_tokens)) == list(range(len(spec.special_tokens)))
        for i, s in enumerate(spec.special_tokens):
            assert tok.encode(s, add_special_tokens=False) == [i]
        assert tok.eos_token == spec.eos
        assert tok.pad_token == spec.pad
        assert tok.bos_token == spec.bos
        assert tok.convert_tokens_to_ids(spec.end_of_turn) in range(len(spec.special_tokens))


def test_chat_template_exact_string(family_pair):
    family, built, reloaded = family_pair
    for tok in (built, reloaded):
        text = tok.apply_chat_template(HI, tokenize=False, add_generation_prompt=True)
        assert text == EXPECTED_PROMPT[family]
    assert reloaded.chat_template == built.chat_template == tk.CHAT_TEMPLATES[family]


def test_templated_ids_have_exactly_one_bos_and_round_trip(family_pair):
    family, built, reloaded = family_pair
    spec = tk.family_tokens(family)
    for tok in (built, reloaded):
        ids = _ids(tok.apply_chat_template(HI, tokenize=True, add_generation_prompt=True))
        assert ids == built(EXPECTED_PROMPT[family], add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == EXPECTED_PROMPT[family]
        if spec.bos is None:
            assert tok.bos_token_id is None
            assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
        else:
            bos_id = tok.convert_tokens_to_ids(spec.bos)
            assert ids[0] == bos_id
            assert ids.count(bos_id) == 1  # no double BOS from template + post-processor


def test_plain_text_gets_bos_like_the_real_tokenizers(family_pair):
    family, built, reloaded = family_pair
    spec = tk.family_tokens(family)
    for tok in (built, reloaded):
        plain = tok("Hi there", add_special_tokens=False)["input_ids"]
        with_special = tok("Hi there")["input_ids"]
        if spec.bos is None:
            assert with_special == plain
        else:
            assert with_special == [tok.convert_tokens_to_ids(spec.bos)] + plain
        assert tok.decode(plain) == "Hi there"


def test_multi_turn_and_unicode_round_trip(family_pair):
    family, _, reloaded = family_pair
    msgs = [
        {"role": "user", "content": "Café naïve — 你好? 🙂"},
        {"role": "assistant", "content": "Bonjour!"},
        {"role": "user", "content": "Again."},
    ]
    text = reloaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    ids = reloaded(text, add_special_tokens=False)["input_ids"]
    assert reloaded.decode(ids) == text
    end = tk.family_tokens(family).end_of_turn
    assert text.count(end) == 3 + (family == "qwen2")  # qwen2 adds its default system turn
    if family == "gemma":
        assert "<start_of_turn>model\nBonjour!<end_of_turn>\n" in text


def test_gemma_rejects_system_role(family_pair):
    family, _, reloaded = family_pair
    msgs = [{"role": "system", "content": "Be terse."}, *HI]
    if family == "gemma":
        with pytest.raises(Exception, match="System role not supported"):
            reloaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    else:
        text = reloaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert "Be terse." in text
        assert "You are a helpful assistant." not in text


def test_saved_files_are_self_contained(family_pair, tmp_path):
    family, built, _ = family_pair
    built.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == tk.family_tokens(family).eos
    assert (tmp_path / "tokenizer.json").exists()


def test_bad_arguments_raise(corpus):
    with pytest.raises(ValueError, match="unknown tokenizer family"):
        tk.build_bpe_tokenizer(corpus[:10], vocab_size=512, family="mistral")
    with pytest.raises(ValueError, match="vocab_size"):
        tk.build_bpe_tokenizer(corpus[:10], vocab_size=100, family="gemma")


def test_training_is_deterministic(corpus):
    a = tk.build_bpe_tokenizer(corpus, vocab_size=400, family="llama3")
    b = tk.build_bpe_tokenizer(corpus, vocab_size=400, family="llama3")
    assert a.get_vocab() == b.get_vocab()
    assert tk.family_tokens("gemma").stop_tokens == ("<end_of_turn>", "<eos>")
    assert tk.family_tokens("qwen2").stop_tokens == ("<|im_end|>",)


@pytest.mark.parametrize("family, expected", [
    ("gemma", ["<bos>", "<start_of_turn>", "model", "\n"]),
    ("llama3", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "\n\n"]),
    ("qwen2", ["<|im_start|>", "system", "assistant", "\n"]),
])
def test_prompt_only_positions_steer_the_templates_filler_tokens(family, expected):
    """f2+l2 on a chat-templated prompt selects the template's role and newline tokens, whole, as on the real
    vocabularies (method.md: `<bos>`, `<start_of_turn>`, `model`, `\\n` for Gemma)."""
    import jax.numpy as jnp

    from prosv_jax.inference.prompts import prompt_ids
    from prosv_jax.interventions.positions import PositionSpec

    tokenizer = tk.builtin_tokenizer(family, vocab_size=512)
    ids = prompt_ids(tokenizer, "Tell me about Paris.", True)
    valid = jnp.ones((1, len(ids)), bool)
    mask = np.asarray(PositionSpec.parse("f2+l2").mask(valid, valid))[0]
    selected = [tokenizer.decode([i]) if tokenizer.convert_ids_to_tokens(i) not in tokenizer.all_special_tokens
                else tokenizer.convert_ids_to_tokens(i) for i, keep in zip(ids, mask) if keep]
    assert selected == expected
