"""Parity of the Flax decoder with transformers on tiny random models of every family and feature flag."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_models
from prosv_jax.inference.generate import generate
from prosv_jax.models.decoder import positions_from_valid
from prosv_jax.models.loading import load_model

LENGTHS = (12, 7, 3)  # longer and shorter than the sliding windows (4-5)


@pytest.fixture(scope="module", params=sorted(hf_models.CONFIGS))
def pair(request, tmp_path_factory):
    """(torch model, its directory, prosv-jax float32 model) for one config."""
    directory = tmp_path_factory.mktemp(request.param)
    torch_model = hf_models.build(request.param, directory, with_tokenizer=False)
    return torch_model, directory, load_model(directory, jnp.float32)


def padded_batch(lengths, side: str, seed: int = 0):
    rng = np.random.RandomState(seed)
    width = max(lengths)
    tokens = rng.randint(5, hf_models.VOCAB, (len(lengths), width))
    valid = np.zeros((len(lengths), width), bool)
    for row, n in enumerate(lengths):
        if side == "left":
            valid[row, width - n:] = True
        else:
            valid[row, :n] = True
    positions = np.asarray(positions_from_valid(jnp.asarray(valid)))
    return tokens, valid, positions


@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_transformers(pair, side):
    torch_model, _, model = pair
    tokens, valid, positions = padded_batch(LENGTHS, side)
    expected = hf_models.hf_logits(torch_model, tokens, valid, positions)
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid)).logits)
    assert expected[valid].std() > 0.3, "reference logits too flat for the comparison to mean anything"
    np.testing.assert_allclose(got[valid], expected[valid], rtol=0, atol=1e-4)


def test_block_residuals_match_hidden_states(pair):
    torch_model, _, model = pair
    tokens, valid, positions = padded_batch(LENGTHS, "left", seed=1)
    _, hidden = hf_models.hf_logits(torch_model, tokens, valid, positions, hidden=True)
    layers = range(model.cfg.num_layers - 1)  # HF's last entry is after the final norm
    out = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid), capture=tuple(layers), logits=False)
    for layer in layers:
        expected = hidden[layer + 1][valid]
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(np.asarray(out.hidden[layer])[valid], expected, rtol=0, atol=1e-5 * scale,
                                   err_msg=f"block {layer}")


def test_greedy_generation_matches_transformers(pair):
    torch_model, _, model = pair
    tokens, valid, _ = padded_batch((9, 4), "left", seed=2)
    cfg = torch_model.config
    with torch.no_grad():
        reference = torch_model.generate(
            input_ids=torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64)), do_sample=False,
            max_new_tokens=32, min_new_tokens=0, pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id,
        )[:, tokens.shape[1]:].numpy()
    out = generate(model, tokens, valid, max_new_tokens=32)
    got = np.asarray(out.tokens)
    assert reference.shape[1] >= 8, "reference stopped too early to compare"
    np.testing.assert_array_equal(got[:, :reference.shape[1]], reference)
    assert (got[:, reference.shape[1]:] == cfg.pad_token_id).all()


def test_bfloat16_as_close_as_transformers_bfloat16(pair):
    """bf16 error vs the float32 truth is at most 2x transformers' own bf16 error (plus a 0.02 floor)."""
    torch_model, directory, _ = pair
    tokens, valid, positions = padded_batch(LENGTHS, "left", seed=3)
    truth = hf_models.hf_logits(torch_model, tokens, valid, positions)[valid]
    reference_bf16 = hf_models.hf_logits(torch_model.to(torch.bfloat16), tokens, valid, positions)[valid]
    torch_model.to(torch.float32)
    model = load_model(directory, jnp.bfloat16)
    assert model.layers[0].mlp.gate[...].dtype == jnp.bfloat16
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid)).logits)[valid]
    reference_error = np.abs(reference_bf16 - truth).max()
    assert np.abs(got - truth).max() <= 2 * reference_error + 0.02
