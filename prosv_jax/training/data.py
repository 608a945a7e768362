"""A training set packed once into fixed-shape arrays, and each run's deterministic data order.

Every batch of a dataset has the same shape (so one compiled step serves all of them), rows are gathered by
index inside the step, and a run's order is a pure function of (seed, step): resuming at step s needs nothing but
s. The last batch of an epoch may be partial; its missing rows are masked out of the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from prosv_jax.training.batch import TrainBatch, make_batch

Example = tuple[Sequence[int], Sequence[int]]  # (prompt ids, response ids)


@dataclasses.dataclass
class TrainDataset:
    """N examples as arrays [N, ...]; `negatives` (same prompts, concept-free responses) for SimPO."""

    positives: TrainBatch
    negatives: TrainBatch | None = None

    @classmethod
    def from_examples(cls, positives: Sequence[Example], negatives: Sequence[Example] | None = None, *,
                      max_response: int | None = None, pad_id: int = 0, multiple: int = 16) -> "TrainDataset":
        if not positives:
            raise ValueError("empty training set: no examples were given")
        if negatives is not None and len(negatives) != len(positives):
            raise ValueError(f"SimPO needs one negative per positive: {len(positives)} positives, "
                             f"{len(negatives)} negatives")
        everything = list(positives) + list(negatives or [])
        probe = make_batch(everything, max_response=max_response, pad_id=pad_id, multiple=multiple)
        shape = dict(length=probe.tokens.shape[1], response_slots=probe.target_ids.shape[1])
        pos = make_batch(positives, max_response=max_response, pad_id=pad_id, **shape)
        neg = make_batch(negatives, max_response=max_response, pad_id=pad_id, **shape) if negatives else None
        return cls(pos, neg)

    def __len__(self) -> int:
        return self.positives.tokens.shape[0]

    @property
    def paired(self) -> bool:
        return self.negatives is not None


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(example indices [batch_size], row mask [batch_size]) of micro-step `step` of a run seeded `seed`.

    Each epoch is a fresh permutation drawn from (seed, epoch); a partial last batch repeats index 0, masked.
    """
    per_epoch = steps_per_epoch(num_examples, batch_size)
    epoch, within = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    chosen = order[within * batch_size:(within + 1) * batch_size]
    mask = np.zeros(batch_size, bool)
    mask[:len(chosen)] = True
    return np.concatenate([chosen, np.zeros(batch_size - len(chosen), chosen.dtype)]), mask
