"""Packed rows compute what unpacked rows compute: segment helpers against loops, the packer's layout, and the
loss and gradients of Lang and SimPO, PrOSV and FSSV, with and without the frozen prefix, on a Llama-style model
and a Gemma-2 one with a sliding window shorter than the examples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_models
from prosv_jax.interventions import Site, Steering, SteeringVector
from prosv_jax.models.loading import load_model
from prosv_jax.models.segments import positions_from_segments, within_segment
from prosv_jax.training.batch import make_batch
from prosv_jax.training.packing import first_fit_rows, pack_map, packed_step_data, plan_shape
from prosv_jax.training.step import StepConfig, StepData, loss_fn, prefix_residuals, reference_logprob_sums


@pytest.fixture(scope="module", params=["llama_gqa_untied", "gemma2_window"])
def model(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    hf_models.build(request.param, directory, with_tokenizer=False)
    return load_model(directory, jnp.float32)


def random_examples(count: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = np.random.RandomState(seed)
    return [(list(rng.randint(5, hf_models.VOCAB, rng.randint(3, 8))), list(rng.randint(5, hf_models.VOCAB,
                                                                                        rng.randint(2, 7))))
            for _ in range(count)]


def test_segment_helpers_match_loops():
    rng = np.random.RandomState(0)
    segments = np.zeros((3, 20), np.int32)
    for row in segments:  # runs of examples 1, 2, ... then padding
        at, k = 0, 1
        while at < 16:
            n = rng.randint(1, 6)
            row[at:at + n] = k
            at, k = at + n, k + 1
    values = (rng.rand(3, 20) > 0.4).astype(np.int32)
    positions = np.asarray(positions_from_segments(jnp.asarray(segments)))
    running, total = (np.asarray(x) for x in within_segment(jnp.asarray(values), jnp.asarray(segments)))
    for b in range(3):
        for t in range(20):
            run = np.flatnonzero(segments[b] == segments[b, t])  # each id is one contiguous run, padding last
            assert positions[b, t] == (t - run[0] if segments[b, t] else 0)
            assert running[b, t] == values[b, run[0]:t + 1].sum()
            assert total[b, t] == values[b, run].sum()


def test_first_fit_rows_and_the_pack_map_layout():
    assert first_fit_rows([5, 9, 4, 3, 6], 10) == [[1], [2, 4], [0, 3]]  # placed 9, 6, 5, 4, 3
    with pytest.raises(ValueError, match="raise the pack length to at least 12"):
        first_fit_rows([5, 12], 10)
    m = pack_map([7, 3, 9], [4, 0, 5], [2, 0, 3], length=10, rows=1, slots=8)  # example 1 is masked out
    np.testing.assert_array_equal(m.segments[0], [1, 1, 1, 1, 3, 3, 3, 3, 3, 0])
    np.testing.assert_array_equal(m.source[0, :9], [7] * 4 + [9] * 5)
    np.testing.assert_array_equal(m.offset[0, :9], [0, 1, 2, 3, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(m.target_shift[0, :5], [0, 0, 4, 4, 4])
    np.testing.assert_array_equal(m.target_example[0, :5], [0, 0, 2, 2, 2])
    assert m.target_live[0].sum() == 5
    with pytest.raises(ValueError, match="need 2 packed rows, the compiled shape has 1"):
        pack_map([0, 1], [6, 6], [2, 2], length=10, rows=1, slots=8)
    assert plan_shape([[6, 6, 3], [9, 0, 0]], [[2, 2, 1], [5, 0, 0]], 10) == (2, 16)


def unpacked_and_packed(exs, length: int, masked: tuple[int, ...] = ()):
    """Unpacked StepData of examples (rows in `masked` out of the loss) and its packed twin."""
    batch = make_batch(exs, length=16, response_slots=8)
    keep = np.array([i not in masked for i in range(len(exs))])
    unpacked = StepData(*(jnp.asarray(a) for a in batch[:5]), jnp.asarray(batch.target_mask & keep[:, None]),
                        jnp.zeros(len(exs), jnp.float32))
    tokens = [len(p) + len(r) if keep[i] else 0 for i, (p, r) in enumerate(exs)]
    responses = [len(r) if keep[i] else 0 for i, (_, r) in enumerate(exs)]
    rows, slots = plan_shape([tokens], [responses], length)
    m = pack_map(range(len(exs)), tokens, responses, length=length, rows=rows, slots=slots)
    return batch, unpacked, m


def assert_same_loss_and_grads(model, steering, config, unpacked, packed):
    params = steering.init_params(jax.random.key(3), model.cfg)
    grad = jax.jit(jax.value_and_grad(loss_fn), static_argnums=(2, 4))
    (loss, grads), (loss_p, grads_p) = (grad(params, model, steering, d, config) for d in (unpacked, packed))
    np.testing.assert_allclose(float(loss_p), float(loss), rtol=1e-5)
    for site in grads:
        for name in grads[site]:
            g, gp = np.asarray(grads[site][name]), np.asarray(grads_p[site][name])
            assert np.abs(g).max() > 1e-5
            np.testing.assert_allclose(gp, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["f2+l2", "all"])
def test_packed_lang_loss_and_gradients_equal_unpacked(model, spec):
    """Seven examples, one masked out (a partial last batch), packed into rows of 32 tokens: 3-4 per row."""
    exs = random_examples(7, seed=1)
    batch, unpacked, m = unpacked_and_packed(exs, 32, masked=(4,))
    packed = packed_step_data(batch, unpacked.reference, None, m)
    assert packed.tokens.shape[0] < len(exs) and (np.asarray(packed.segments).max(1) > 0).all()
    steering = Steering.single(1, SteeringVector(beta=1.0, c=4.0), spec)
    assert_same_loss_and_grads(model, steering, StepConfig("lang", vocab_chunk=37), unpacked, packed)


def test_packed_simpo_with_the_frozen_prefix_equals_unpacked(model):
    """Three pairs; sites at blocks 1 (PrOSV) and 2 (FSSV); the packed prefix is the unpacked one gathered, and equals
    the prefix computed on the packed rows themselves."""
    exs = random_examples(6, seed=2)
    steering = Steering((Site(1, SteeringVector(beta=1.0, c=4.0), "f2+l2", "a"),
                         Site(2, SteeringVector(beta=1.0, c=4.0), "all", "b")))
    batch, unpacked, m = unpacked_and_packed(exs, 28)
    unpacked = unpacked._replace(reference=jax.jit(reference_logprob_sums)(model, unpacked))
    prefix = jax.jit(prefix_residuals, static_argnums=1)(model, steering, unpacked.tokens, unpacked.valid)
    packed = packed_step_data(batch, unpacked.reference, prefix, m)
    on_rows = jax.jit(prefix_residuals, static_argnums=1)(model, steering, packed.tokens, packed.valid,
                                                          packed.segments)
    live = np.asarray(packed.segments) > 0
    np.testing.assert_allclose(np.asarray(on_rows)[live], np.asarray(packed.prefix)[live], rtol=1e-5, atol=1e-5)
    config = StepConfig("simpo", vocab_chunk=37)
    assert_same_loss_and_grads(model, steering, config, unpacked._replace(prefix=prefix), packed)
