"""Real pretrained weights: SmolLM2-135M-Instruct and Gemma-3-270M, imported from their registry GGUF packages.

The reference is transformers' own GGUF loading of the same files (torch, float32): logits, block residuals,
greedy generations and templated token ids must agree. Real weights catch what random ones cannot: activations in
the tens of thousands on the first token, real norm scales, real chat templates.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from prosv_jax.inference.generate import generate
from prosv_jax.inference.prompts import left_pad, prompt_ids
from prosv_jax.interventions.positions import PositionSpec
from prosv_jax.models.decoder import positions_from_valid
from prosv_jax.models.loading import load_model
from prosv_jax.models.sources import KNOWN_MODELS

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Explain in two sentences why the sky is blue, and mention one thing most people get wrong about it.",
           "Hi", "List three prime numbers."]
# What f2+l2 steers on each real template (method.md: the template's filler tokens). SmolLM2's ChatML starts with
# its default system turn, and its BPE splits the last role name into "ass" + "istant".
EXPECTED_F2_L2 = {"smollm2-135m-instruct": ["<|im_start|>", "system", "istant", "\n"],
                  "gemma3-270m": ["<bos>", "<start_of_turn>", "model", "\n"]}
LAYER = {"smollm2-135m-instruct": 12, "gemma3-270m": 7}  # ~0.4 of the depth, where the paper steers


@pytest.fixture(scope="module", params=sorted(KNOWN_MODELS))
def real(request, real_models_cache, tmp_path_factory):
    """(name, converted folder, prosv-jax float32 model, transformers float32 model, transformers GGUF tokenizer)."""
    name = request.param
    known = KNOWN_MODELS[name]
    gguf_path = known.locate(str(tmp_path_factory.mktemp("gguf")))
    folder = real_models_cache(name)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32)
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    return name, folder, load_model(folder, jnp.float32), reference.eval(), reference_tokenizer


def _chat_batch(tokenizer, count=4):
    """Left-padded chat-templated prompts of different lengths: (tokens, valid, positions) numpy arrays."""
    batch = left_pad([prompt_ids(tokenizer, p, True) for p in PROMPTS[:count]], tokenizer.pad_token_id or 0, 1)
    positions = np.asarray(positions_from_valid(jnp.asarray(batch.valid)))
    return np.asarray(batch.tokens), np.asarray(batch.valid), positions


def _reference(model, tokens, valid, positions):
    with torch.no_grad():
        out = model(torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64)),
                    position_ids=torch.tensor(positions), output_hidden_states=True)
    return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]


def test_templated_token_ids_equal_transformers(real):
    name, folder, _, _, reference_tokenizer = real
    ours = transformers.AutoTokenizer.from_pretrained(folder)
    if reference_tokenizer.chat_template is None:  # the Gemma-3 base file has none: compare with ours attached
        reference_tokenizer.chat_template = ours.chat_template
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        expected = reference_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        got = prompt_ids(ours, prompt, True)
        assert list(got) == list(_ids(expected)), (name, prompt)
        assert ours(prompt)["input_ids"] == reference_tokenizer(prompt)["input_ids"]


def _ids(encoded):
    return encoded["input_ids"] if isinstance(encoded, (dict, transformers.BatchEncoding)) else encoded


def test_logits_and_block_residuals_match_transformers(real):
    name, _, model, reference, reference_tokenizer = real
    tokens, valid, positions = _chat_batch(reference_tokenizer)
    expected, hidden = _reference(reference, tokens, valid, positions)
    layer = LAYER[name]
    out = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid), capture=(layer,))
    got = np.asarray(out.logits)
    scale = expected[valid].std()
    error = np.abs(got - expected)[valid].max()
    print(f"{name}: logits max |diff| {error:.2e} = {error / scale:.1e} of the logit std {scale:.2f}")
    assert error <= 1e-4 * scale * 10  # observed 1.4e-4 (SmolLM2) and 5e-5 (Gemma-3) at a logit std of ~5.5
    residual, expected_residual = np.asarray(out.hidden[layer])[valid], hidden[layer + 1][valid]
    peak = np.abs(expected_residual).max()
    residual_error = np.abs(residual - expected_residual).max()
    print(f"{name}: block {layer} residual max |diff| {residual_error:.2e} at max |h| {peak:.0f}")
    assert peak > 1000, "real checkpoints have massive activations; a small peak means the wrong tensor"
    assert residual_error <= 1e-6 * peak * 5


def test_greedy_generation_matches_transformers(real):
    _, _, model, reference, reference_tokenizer = real
    tokens, valid, _ = _chat_batch(reference_tokenizer)
    with torch.no_grad():
        expected = reference.generate(
            input_ids=torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64)), do_sample=False,
            max_new_tokens=32, min_new_tokens=32, pad_token_id=reference_tokenizer.pad_token_id,
            eos_token_id=None)[:, tokens.shape[1]:].numpy()
    got = np.asarray(generate(model, tokens, valid, max_new_tokens=32, stop_ids=()).tokens)
    np.testing.assert_array_equal(got, expected)


def test_bfloat16_is_as_close_as_transformers_bfloat16(real):
    """bf16 vs the float32 truth: at most 2x transformers' own bf16 error (the weights and activations round the
    same way; the order of the sums differs), on the same padded batch."""
    name, folder, model, reference, reference_tokenizer = real
    tokens, valid, positions = _chat_batch(reference_tokenizer)
    truth = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid)).logits)[valid]
    reference_bf16 = _reference(reference.to(torch.bfloat16), tokens, valid, positions)[0][valid]
    reference.to(torch.float32)
    ours_bf16 = load_model(folder, jnp.bfloat16)
    got = np.asarray(ours_bf16(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid)).logits,
                     np.float32)[valid]
    ours_error, reference_error = np.abs(got - truth).max(), np.abs(reference_bf16 - truth).max()
    print(f"{name}: bfloat16 logits max |diff| ours {ours_error:.3f}, transformers {reference_error:.3f}")
    assert ours_error <= 2 * reference_error
    assert (got.argmax(-1) == truth.argmax(-1)).mean() >= 0.9


def test_prompt_only_positions_select_the_template_tokens(real):
    name, folder, _, _, _ = real
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokens, valid, _ = _chat_batch(tokenizer)
    mask = np.asarray(PositionSpec.parse("f2+l2").mask(jnp.asarray(valid), jnp.asarray(valid)))  # prompt = valid
    for row in range(tokens.shape[0]):
        selected = [tokenizer.convert_ids_to_tokens(int(t)) for t in tokens[row][mask[row]]]
        selected = [tokenizer.convert_tokens_to_string([t]) if t not in tokenizer.all_special_tokens else t
                    for t in selected]
        print(f"{name}: f2+l2 selects {selected}")
        assert selected == EXPECTED_F2_L2[name]


@pytest.mark.parametrize("name, beta, factor_lr, c", [("lang_prosv", 4, 10.0, 8), ("lang_fssv", 2, 1.0, 1),
                                                       ("simpo_prosv", 4, 20.0, 8)])
def test_smollm2_configs_take_the_real_model_and_the_moved_recipe(name, beta, factor_lr, c, real_models_cache,
                                                                   monkeypatch):
    """The SmolLM2 train configs name the built-in real model (resolved like any --model) and carry the paper's
    Gemma-2-2B L10 row moved from width 2304 to 576: eta_alpha x (576/2304)^1/2, eta_v x (576/2304)^-1/2."""
    from prosv_jax.commands.train import _model_dir, check_config
    from prosv_jax.config import resolve

    config = resolve(os.path.join(os.path.dirname(__file__), "..", "experiments", "configs",
                                  f"smollm2_135m_l12_{name}.py"))
    if config.objective == "simpo":
        config.data.negatives = __file__  # check_config only asks that the file exists
    monkeypatch.setenv("PROSV_JAX_CACHE", real_models_cache.root)
    check_config(config)
    assert _model_dir(config) == real_models_cache("smollm2-135m-instruct")
    assert (config.steering.beta, config.steering.c, config.steering.layer) == (beta, c, 12)
    assert config.optim.factor_lr == pytest.approx(factor_lr * 0.5)
    assert config.optim.direction_lr == pytest.approx(4e-2 * 2)
