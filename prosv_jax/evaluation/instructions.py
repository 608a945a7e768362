"""AlpacaEval instructions for the steering evaluation (method.md section 4, data.md ``alpaca_eval``)."""

from __future__ import annotations

import json
import operator
import os
from typing import Sequence

import numpy as np


def load_alpaca_instructions(path: str | os.PathLike | None = None) -> list[str]:
    """Read AlpacaEval's ``instructions.json``: a JSON list ``[{"dataset": ..., "instruction": ...}, ...]``, or a list of
    the instruction strings (the bundled copy's format); None: the bundled copy of the 805 instructions.

    Returns the instruction strings in file order (the order matters: sampling picks indices into this list).
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for invalid JSON or a wrong schema (not a list,
    an entry without a string ``"instruction"``, an empty list).
    """
    if path is None:
        from prosv_jax.data.bundled import bundled_instructions_path

        path = bundled_instructions_path()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"AlpacaEval instructions file not found: {path} "
                                f"(AlpacaEval's instructions.json; leave the path out for the bundled copy)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"AlpacaEval instructions file {path} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"AlpacaEval instructions file {path} must hold a JSON list of "
                         f'{{"dataset": ..., "instruction": ...}} objects, got a {type(data).__name__}')
    if not data:
        raise ValueError(f"AlpacaEval instructions file {path} holds an empty list")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            out.append(item)
            continue
        if not isinstance(item, dict) or not isinstance(item.get("instruction"), str):
            raise ValueError(f"AlpacaEval instructions file {path}: entry {i} has no string 'instruction' field "
                             f'(expected {{"dataset": ..., "instruction": ...}}), got {str(item)[:80]!r}')
        out.append(item["instruction"])
    return out


def sample_instructions(instructions: Sequence[str], concept_id: int, n: int = 10) -> list[tuple[int, str]]:
    """Pick ``n`` instructions for one concept, seeded by the concept id: ``[(index, text), ...]``.

    This is AxBench's draw, bit for bit: the reference runs ``alpaca_eval_df.sample(n, random_state=concept_id)`` over
    the 805 instructions in file order, and pandas implements that as
    ``np.random.RandomState(concept_id).choice(len(df), n, replace=False)``, i.e. the first ``n`` entries of
    ``RandomState(concept_id).permutation(len(df))`` (method.md section 4; concept 0 draws 8, 258, 172, 317, ...).
    Reproducing it with numpy's legacy ``RandomState`` (whose stream numpy keeps stable across versions) avoids a
    pandas dependency.  Position ``k`` in the returned list is "instruction k" in factor selection (choose on 0-4,
    report on 5-9).
    """
    try:
        seed = operator.index(concept_id)
    except TypeError:
        raise TypeError(f"concept_id must be an integer, got {type(concept_id).__name__}") from None
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > len(instructions):
        raise ValueError(f"cannot sample {n} instructions from a list of {len(instructions)}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"concept_id must be in [0, 2**32) to seed AxBench's draw, got {seed}")
    idx = np.random.RandomState(seed).permutation(len(instructions))[:n]
    return [(int(i), instructions[i]) for i in idx]
