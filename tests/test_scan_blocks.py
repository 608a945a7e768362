"""Scanned blocks (`Decoder.run_blocks` runs long stretches of plain blocks as one `lax.scan`): which blocks are
scanned, and that a scanned pass equals the unrolled one (logits, captured residuals, steered log-probs and their
gradients, from the full model and from a cached prefix) for the three layer-type patterns (Llama: one type;
Gemma-2: alternating windows; Gemma-3: five local blocks then one global)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from hf_models import CONFIGS, VOCAB
from prosv_jax.interventions import Steering
from prosv_jax.interventions.transform import make_hook
from prosv_jax.models.config import ModelConfig
from prosv_jax.models.decoder import Decoder, positions_from_valid
from prosv_jax.training.batch import make_batch
from prosv_jax.training.step import StepData, prefix_residuals, response_logprobs

BLOCKS = 14
PATTERNS = ("llama_gqa_untied", "gemma2_window", "gemma3_qknorm_ropes")


def deep_model(name: str, scan_min_blocks: int) -> Decoder:
    config_class, _, _, kwargs = CONFIGS[name]
    cfg = ModelConfig.from_hf(config_class(vocab_size=VOCAB, **{**kwargs, "num_hidden_layers": BLOCKS}))
    model = Decoder(cfg, jnp.float32, rngs=nnx.Rngs(0))
    model.scan_min_blocks = scan_min_blocks
    return model


def test_which_blocks_are_scanned():
    hook = make_hook(Steering.single(5), {}, {})
    llama = deep_model("llama_gqa_untied", 4)
    assert llama._scan_plan(0, BLOCKS, {BLOCKS - 1}, hook) == {0: (1, 5), 6: (1, 7)}  # hooked 5, row-cut 13
    assert llama._scan_plan(0, BLOCKS, {BLOCKS - 1}, lambda layer, h: h) == {}  # a hook that hides its blocks
    gemma2 = deep_model("gemma2_window", 4)
    assert gemma2._scan_plan(0, BLOCKS, {BLOCKS - 1}, hook) == {0: (2, 2), 6: (2, 3)}  # pairs of windows
    gemma3 = deep_model("gemma3_qknorm_ropes", 4)
    assert gemma3.cfg.layer_types[:6] == ("sliding_attention",) * 5 + ("full_attention",)
    assert gemma3._scan_plan(0, BLOCKS, set(), None) == {0: (6, 2)}  # blocks 12, 13 unrolled
    assert deep_model("llama_gqa_untied", 12)._scan_plan(0, BLOCKS, {BLOCKS - 1}, hook) == {}  # stretches < 12


def _data(seed: int = 0) -> StepData:
    rng = np.random.default_rng(seed)
    examples = [(list(rng.integers(1, VOCAB, int(rng.integers(4, 9)))), list(rng.integers(1, VOCAB, 10)))
                for _ in range(3)]
    b = make_batch(examples)
    return StepData(b.tokens, b.valid, b.prompt_mask, b.target_index, b.target_ids, b.target_mask,
                    np.zeros(3, np.float32))


@pytest.mark.parametrize("name", PATTERNS)
def test_scanned_pass_equals_the_unrolled_one(name):
    unrolled, scanned = deep_model(name, 0), deep_model(name, 2)
    data = _data()
    steering = Steering.single(4, positions="f2+l2")
    params = steering.init_params(jax.random.key(1), unrolled.cfg)
    params = jax.tree.map(lambda p: p * 3.0, params)  # a visible edit

    def everything(model):
        out = model(data.tokens, positions_from_valid(data.valid), data.valid, capture=(2, 9))
        loss = lambda p, d: (response_logprobs(model, steering, p, d) * d.target_mask).sum()  # noqa: E731
        prefixed = data._replace(prefix=prefix_residuals(model, steering, data.tokens, data.valid))
        return (out.logits, out.hidden[2], out.hidden[9], *jax.value_and_grad(loss)(params, data),
                *jax.value_and_grad(loss)(params, prefixed))

    def compiled(model):
        graphdef, state = nnx.split(model)
        return jax.jit(lambda state: everything(nnx.merge(graphdef, state)))(state)

    want, got = compiled(unrolled), compiled(scanned)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-5)
    assert float(jnp.abs(want[0]).max()) > 0.1  # logits of a model that computes something
    forward = lambda model: jax.make_jaxpr(  # noqa: E731
        lambda t, v: model(t, positions_from_valid(v), v).logits)(data.tokens, data.valid)
    assert "scan[" in str(forward(scanned)) and "scan[" not in str(forward(unrolled))
