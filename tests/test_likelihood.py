"""answer_logprobs: summed answer log-probs against transformers (unsteered) and against the steered full logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_models import build
from prosv_jax.evaluation.likelihood import answer_logprobs
from prosv_jax.models.loading import load_model

EXAMPLES = [([1, 5, 9], [12, 40, 7, 3]), ([1, 6], [50]), ([1, 8, 8, 8, 2], [33, 34]), ([1, 4], [70, 71, 72, 73, 74])]


def _reference(logits: np.ndarray, prompt, answer) -> float:
    """sum_t log softmax(logits[p - 1 + t])[answer[t]] in float64."""
    logp = logits.astype(np.float64) - np.logaddexp.reduce(logits.astype(np.float64), axis=-1, keepdims=True)
    return sum(logp[len(prompt) - 1 + t, a] for t, a in enumerate(answer))


def test_answer_logprobs_equal_transformers(tmp_path):
    hf = build("qwen2_bias_tied", tmp_path)
    sums, counts = answer_logprobs(load_model(str(tmp_path), jnp.float32), EXAMPLES, batch_size=3, max_answer=4)
    for (prompt, answer), got, n in zip(EXAMPLES, sums, counts):
        answer = answer[:4]
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + answer])).logits[0].numpy()
        assert n == len(answer)
        assert got == pytest.approx(_reference(logits, prompt, answer), rel=1e-5, abs=1e-4)


def test_steered_answer_logprobs_equal_the_steered_full_logits(tmp_path):
    from prosv_jax.interventions import Steering, SteeringVector
    from prosv_jax.interventions.transform import steered_forward
    from prosv_jax.training.batch import make_batch

    build("llama_gqa_untied", tmp_path)
    model = load_model(str(tmp_path), jnp.float32)
    steering = Steering.single(1, SteeringVector(beta=2.0, c=4.0), "f2+l2")
    params = steering.init_params(jax.random.key(0), model.cfg)
    sums, _ = answer_logprobs(model, EXAMPLES, steering=steering, params=params, batch_size=2)
    plain, _ = answer_logprobs(model, EXAMPLES, batch_size=2)
    for row, (prompt, answer) in enumerate(EXAMPLES):
        batch = make_batch([(prompt, answer)])
        logits = steered_forward(steering)(model, params, batch.tokens, batch.valid, batch.prompt_mask).logits[0]
        assert sums[row] == pytest.approx(_reference(np.asarray(logits), prompt, answer), rel=1e-5, abs=1e-4)
    assert np.abs(sums - plain).max() > 1e-3  # the steering changes the likelihoods
    with pytest.raises(ValueError, match="both steering and params"):
        answer_logprobs(model, EXAMPLES, steering=steering)


def test_sacrifice_is_zero_at_factor_zero_and_grows_with_a_strong_full_sequence_steering(real_models_cache,
                                                                                          monkeypatch):
    """SmolLM2-135M-Instruct, 8 of GPT-4's AlpacaEval answers: a steering with factor 0 costs nothing (exactly);
    a random direction at a large factor on every token makes ordinary answers less likely; the same steering on
    the prompt's f2+l2 only costs less."""
    from transformers import AutoTokenizer

    from prosv_jax.evaluation.sacrifice import reference_pairs, sacrifice
    from prosv_jax.interventions import Steering, SteeringVector

    monkeypatch.setenv("PROSV_JAX_CACHE", real_models_cache.root)
    model_dir = real_models_cache("smollm2-135m-instruct")
    model, tokenizer = load_model(model_dir, jnp.float32), AutoTokenizer.from_pretrained(model_dir)
    pairs = reference_pairs(8)
    costs = {}
    for positions in ("all", "f2+l2"):
        steering = Steering.single(15, SteeringVector(beta=4.0, c=8.0), positions)
        params = steering.init_params(jax.random.key(0), model.cfg)
        off = sacrifice(model, tokenizer, steering, steering.with_factor(params, 0.0), pairs, max_answer=64)
        assert off["sacrifice"] == pytest.approx(0.0, abs=1e-6)
        costs[positions] = sacrifice(model, tokenizer, steering, params, pairs, max_answer=64)["sacrifice"]
    print(costs)
    assert costs["all"] > 0.5 and 0 <= costs["f2+l2"] < costs["all"]
    with pytest.raises(ValueError, match="count must be in"):
        reference_pairs(0)
