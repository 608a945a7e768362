"""Per-answer log-likelihoods under a model, batched: the raw material of the judge-free ratings and of sacrifice.

`answer_logprobs` returns, for each (prompt ids, answer ids) pair, the summed log-probability of the answer tokens
given the prompt and the number of answer tokens, with an optional steering applied (its trained factors as saved).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

Example = tuple[Sequence[int], Sequence[int]]  # (prompt ids, answer ids)


def rows_per_batch(n: int, batch_size: int) -> int:
    """Batch rows for `n` examples: `batch_size`, or fewer when `n` is smaller (rounded up to a multiple of 8, so
    small calls share compiled shapes): ten answers run as 16 rows, not as 32 with 22 repeats."""
    return min(batch_size, -(-n // 8) * 8)


@functools.partial(jax.jit, static_argnames=("graphdef", "steering", "vocab_chunk"))
def _batch_logprob_sums(graphdef, state, steering, params, data, vocab_chunk: int):
    """Summed answer log-probs [B] of one batch, steered when `steering` is given."""
    from flax import nnx

    from prosv_jax.training.step import reference_logprob_sums, response_logprobs

    model = nnx.merge(graphdef, state)
    if steering is None:
        return reference_logprob_sums(model, data, vocab_chunk)
    return (response_logprobs(model, steering, params, data, vocab_chunk) * data.target_mask).sum(-1)


def answer_logprobs(model, examples: Sequence[Example], *, steering=None, params=None, batch_size: int = 16,
                    max_answer: int | None = 128, vocab_chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(summed log p(answer | prompt) [N], answer token count [N]) per example, answers cut to `max_answer` tokens;
    one padded shape for every batch of the call (one compile), batches no larger than the call needs."""
    import jax.numpy as jnp
    from flax import nnx

    from prosv_jax.training.batch import make_batch
    from prosv_jax.training.step import StepData

    if not examples:
        raise ValueError("answer_logprobs needs at least one (prompt, answer) example")
    if (steering is None) != (params is None):
        raise ValueError("give both steering and params, or neither")
    everything = make_batch(examples, max_response=max_answer)  # [N, T] etc.: the shape every batch gets
    graphdef, state = nnx.split(model)
    if params is not None:
        params = jax.tree.map(lambda p: jnp.asarray(p, model.dtype), params)
    rows = [everything.tokens, everything.valid, everything.prompt_mask, everything.target_index,
            everything.target_ids, everything.target_mask]
    batch_size = rows_per_batch(len(examples), batch_size)
    sums = []
    for start in range(0, len(examples), batch_size):
        take = np.minimum(np.arange(start, start + batch_size), len(examples) - 1)  # a short last batch repeats
        data = StepData(*(a[take] for a in rows), np.zeros(batch_size, np.float32))
        sums.append(np.asarray(_batch_logprob_sums(graphdef, state, steering, params, data, vocab_chunk),
                               np.float64))
    counts = everything.target_mask.sum(1)
    return np.concatenate(sums)[:len(examples)], counts.astype(np.int64)
