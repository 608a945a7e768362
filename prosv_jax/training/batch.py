"""Training batches: prompt + response rows, right-padded, with the response positions gathered up front.

The loss only needs logits at response positions, so a batch names them (`target_index`, the position whose
logits predict each response token) and the head runs on those rows alone, never on the prompt or padding.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class TrainBatch(NamedTuple):
    """Arrays of one batch; B rows, T tokens, R response slots (cut responses, padded)."""

    tokens: np.ndarray  # [B, T] int32 prompt then response, right-padded
    valid: np.ndarray  # [B, T] bool
    prompt_mask: np.ndarray  # [B, T] bool, the prompt's tokens (chat template and BOS included)
    target_index: np.ndarray  # [B, R] int32, position whose logits predict response token r
    target_ids: np.ndarray  # [B, R] int32
    target_mask: np.ndarray  # [B, R] bool


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def make_batch(examples: Sequence[tuple[Sequence[int], Sequence[int]]], *, max_response: int | None = None,
               pad_id: int = 0, length: int | None = None, response_slots: int | None = None,
               multiple: int = 16) -> TrainBatch:
    """Packs (prompt ids, response ids) pairs; responses get no EOS and are cut to `max_response` tokens (None: kept
    whole, as the reference trains Lang).

    `length` and `response_slots` fix T and R (so every batch of a dataset has one shape and compiles once);
    by default they are the batch's own maxima rounded up to `multiple`.
    """
    if not examples:
        raise ValueError("cannot make a batch from zero examples")
    if max_response is not None and max_response < 1:
        raise ValueError(f"max_response must be a positive number of tokens or None (no cut), got {max_response}")
    cut = [(list(p), list(r)[:max_response]) for p, r in examples]
    for i, (prompt, response) in enumerate(cut):
        if not prompt or not response:
            raise ValueError(f"example {i} has an empty {'prompt' if not prompt else 'response'}")
    need_t = max(len(p) + len(r) for p, r in cut)
    need_r = max(len(r) for _, r in cut)
    T = _round_up(need_t, multiple) if length is None else length
    R = _round_up(need_r, multiple) if response_slots is None else response_slots
    if T < need_t or R < need_r:
        raise ValueError(f"batch needs length {need_t} and {need_r} response slots, got {T} and {R}")
    B = len(cut)
    tokens = np.full((B, T), pad_id, np.int32)
    valid = np.zeros((B, T), bool)
    prompt_mask = np.zeros((B, T), bool)
    target_index = np.zeros((B, R), np.int32)
    target_ids = np.zeros((B, R), np.int32)
    target_mask = np.zeros((B, R), bool)
    for row, (prompt, response) in enumerate(cut):
        p, n = len(prompt), len(prompt) + len(response)
        tokens[row, :n] = prompt + response
        valid[row, :n] = True
        prompt_mask[row, :p] = True
        target_index[row, :len(response)] = np.arange(p - 1, n - 1)
        target_ids[row, :len(response)] = response
        target_mask[row, :len(response)] = True
    return TrainBatch(tokens, valid, prompt_mask, target_index, target_ids, target_mask)
