"""Held-out loss of a trained steering: the Lang loss (mean response cross-entropy) over a whole dataset.

Used to compare runs on examples they never trained on (the demo's sweep, notebooks). The unsteered model's loss
is the same computation with every steering-vector factor set to 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prosv_jax.interventions.transform import Steering, SteeringParams
from prosv_jax.models.decoder import Decoder
from prosv_jax.training.data import TrainDataset
from prosv_jax.training.step import StepData, response_logprobs


@functools.partial(jax.jit, static_argnames=("graphdef", "steering", "vocab_chunk"))
def _batch_nll(graphdef, state, steering: Steering, params: SteeringParams, data: StepData, vocab_chunk: int):
    """(summed negative log-likelihood, response-token count) of one batch."""
    model = nnx.merge(graphdef, state)
    logprobs = response_logprobs(model, steering, params, data, vocab_chunk)  # [B, R]
    mask = data.target_mask
    return -(logprobs * mask).sum(), mask.sum()


def dataset_loss(model: Decoder, steering: Steering, params: SteeringParams, dataset: TrainDataset, *,
                 batch_size: int = 16, vocab_chunk: int = 8192) -> float:
    """Token-mean response cross-entropy of the steered model over every positive example of `dataset`."""
    graphdef, state = nnx.split(model)
    params = jax.tree.map(lambda p: jnp.asarray(p, model.dtype), params)
    rows = dataset.positives
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        # The last batch is padded to full size with masked rows, so one compiled program serves every batch.
        take = np.minimum(np.arange(start, start + batch_size), len(dataset) - 1)
        real = np.arange(start, start + batch_size) < len(dataset)
        target_mask = rows.target_mask[take] & real[:, None]
        data = StepData(rows.tokens[take], rows.valid[take], rows.prompt_mask[take], rows.target_index[take],
                        rows.target_ids[take], target_mask, np.zeros(batch_size, np.float32))
        nll, count = _batch_nll(graphdef, state, steering, params, data, vocab_chunk)
        total_nll += float(nll)
        total_tokens += int(count)
    return total_nll / total_tokens


def unsteered_loss(model: Decoder, steering: Steering, params: SteeringParams, dataset: TrainDataset,
                   **kwargs) -> float:
    """`dataset_loss` with every steering-vector factor set to 0: the plain model's loss, one compiled program."""
    return dataset_loss(model, steering, steering.with_factor(params, 0.0), dataset, **kwargs)
