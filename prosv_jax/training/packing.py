"""Packed training batches: a step's examples placed several to a row, so rows carry tokens instead of padding.

The dataset stays as it is (one unpacked row per example, `TrainDataset`); packing is a map from each packed slot
to (dataset row, position in it), planned on the host per step and applied by a gather inside jit, so the cached
block-L residuals are packed by the same gather. Rows are filled first-fit in order of decreasing length; a
step's examples are the same ones, in the same micro-batch, as unpacked: only their layout changes, and with
attention, positions and PrOSV's position masks kept per example (`prosv_jax.models.segments`), so are the loss and
its gradients (up to the order of float sums). SimPO's positive and negative of a pair are packed independently.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from prosv_jax.training.batch import TrainBatch
from prosv_jax.training.step import StepData


def first_fit_rows(lengths: Sequence[int], length: int) -> list[list[int]]:
    """Example indices per row: each example, longest first (ties by index), into the first row it fits."""
    too_long = [i for i, n in enumerate(lengths) if n > length]
    if too_long:
        raise ValueError(f"example {too_long[0]} has {lengths[too_long[0]]} tokens, more than the packed row length "
                         f"{length}: raise the pack length to at least {max(lengths)}")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(length - lengths[i])
    return [sorted(row) for row in rows]


class PackMap(NamedTuple):
    """Where each packed slot comes from. P rows of L tokens, R' response slots per row, E examples."""

    source: np.ndarray  # [P, L] int32 dataset row of each token slot (0 on padding)
    offset: np.ndarray  # [P, L] int32 position in that row
    segments: np.ndarray  # [P, L] int32 1 + the slot's example index (0: padding)
    target_source: np.ndarray  # [P, R'] int32 dataset row of each response slot
    target_slot: np.ndarray  # [P, R'] int32 response slot in that row
    target_shift: np.ndarray  # [P, R'] int32 where that row starts in the packed row
    target_example: np.ndarray  # [P, R'] int32 example index of each response slot
    target_live: np.ndarray  # [P, R'] bool False on padding
    example_source: np.ndarray  # [E] int32 dataset row of each example (for per-example reference log-probs)


def plan_shape(example_lengths: Sequence[Sequence[int]], response_lengths: Sequence[Sequence[int]], length: int,
               multiple: int = 16) -> tuple[int, int]:
    """(rows P, response slots R') that fit every step's packing: example_lengths[s] and response_lengths[s] are
    step s's examples' token and response counts (0 for an example masked out of the step)."""
    rows, slots = 1, 1
    for tokens, responses in zip(example_lengths, response_lengths):
        live = [i for i, n in enumerate(tokens) if n > 0]
        plan = first_fit_rows([tokens[i] for i in live], length)
        rows = max(rows, len(plan))
        slots = max([slots] + [sum(responses[live[i]] for i in row) for row in plan])
    return rows, -(-slots // multiple) * multiple


def pack_map(sources: Sequence[int], lengths: Sequence[int], responses: Sequence[int], *, length: int, rows: int,
             slots: int) -> PackMap:
    """The map of one packed batch of examples e = 0..E-1, example e being dataset row sources[e] with lengths[e]
    tokens (0: masked out of the step, left unplaced) of which responses[e] are response tokens."""
    live = [e for e, n in enumerate(lengths) if n > 0]
    plan = [[live[i] for i in row] for row in first_fit_rows([lengths[e] for e in live], length)]
    if len(plan) > rows:
        raise ValueError(f"the step's examples need {len(plan)} packed rows, the compiled shape has {rows}")
    out = {name: np.zeros((rows, length), np.int32) for name in ("source", "offset", "segments")}
    targets = {name: np.zeros((rows, slots), np.int32)
               for name in ("target_source", "target_slot", "target_shift", "target_example")}
    target_live = np.zeros((rows, slots), bool)
    for r, row in enumerate(plan):
        at, slot = 0, 0
        for e in row:
            n, k = lengths[e], responses[e]
            if slot + k > slots:
                raise ValueError(f"packed row {r} needs {slot + k} response slots, the compiled shape has {slots}")
            out["source"][r, at:at + n] = sources[e]
            out["offset"][r, at:at + n] = np.arange(n)
            out["segments"][r, at:at + n] = e + 1
            targets["target_source"][r, slot:slot + k] = sources[e]
            targets["target_slot"][r, slot:slot + k] = np.arange(k)
            targets["target_shift"][r, slot:slot + k] = at
            targets["target_example"][r, slot:slot + k] = e
            target_live[r, slot:slot + k] = True
            at, slot = at + n, slot + k
    return PackMap(out["source"], out["offset"], out["segments"], targets["target_source"], targets["target_slot"],
                   targets["target_shift"], targets["target_example"], target_live,
                   np.asarray(sources, np.int32))


def packed_step_data(rows: TrainBatch, reference, prefix, m: PackMap) -> StepData:
    """The packed StepData of map `m` over dataset rows [N, T] (their reference log-probs [N] and cached prefix
    [N, T, d] or None); works on numpy or traced arrays (jit it, vmap it over runs)."""
    at = lambda a: a[m.source, m.offset]  # noqa: E731  [N, T, ...] -> [P, L, ...]
    target = lambda a: a[m.target_source, m.target_slot]  # noqa: E731  [N, R] -> [P, R']
    live = m.segments > 0
    return StepData(tokens=at(rows.tokens), valid=at(rows.valid) & live, prompt_mask=at(rows.prompt_mask) & live,
                    target_index=target(rows.target_index) + m.target_shift, target_ids=target(rows.target_ids),
                    target_mask=target(rows.target_mask) & m.target_live, reference=reference[m.example_source],
                    prefix=None if prefix is None else at(prefix), segments=jnp.asarray(m.segments),
                    target_example=jnp.asarray(m.target_example))
