"""Stage `axbench negatives`: concept-free responses for SimPO, written by the unsteered model itself.

AxBench ships no concept-free answers to its training instructions, and SimPO needs one per positive. This stage
answers each training instruction of a concept with the unsteered model (greedy first), scores the answer with the
concept's detector (an `axbench detectors` folder), and re-samples an answer that carries the concept
(P >= `threshold`) at temperature 1 with seeds 1..`retries`, keeping the least concept-like answer. Output: the
negatives JSONL that `train` reads (`data.negatives`; schema in prosv_jax/data/axbench.py), each line with its
detector probability and how it was drawn; a concept whose answers all stay above the threshold is reported.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np


def run_negatives(model: str, split: str, detectors: str, out: str, concepts: Sequence[int] | None = None,
                  max_new_tokens: int = 128, threshold: float = 0.5, retries: int = 3, batch_size: int = 16,
                  dtype: str = "float32", max_examples: int = 0, log: Callable[[str], None] = print) -> dict:
    """Writes the negatives JSONL `out` for every concept of `split` (or `concepts`); returns a summary per concept.
    `max_examples` > 0: only each concept's first N training instructions (as `data.max_examples` trains on).
    A concept already in `out` is kept (the stage resumes concept by concept)."""
    from prosv_jax.data import axbench
    from prosv_jax.files import write_atomic

    from .concept_detector import Evaluator
    from .generation import Generator
    from .runs import check_concepts, concept_table

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"--threshold must be a probability in (0, 1), got {threshold}")
    if max_examples < 0:
        raise ValueError(f"--max-examples must be >= 0 (0 = all), got {max_examples}")
    if retries < 0:
        raise ValueError(f"--retries must be >= 0, got {retries}")
    table = concept_table(split)
    ids = sorted({int(c) for c in concepts}) if concepts else sorted(table)
    check_concepts(ids, table, split)
    evaluator = Evaluator.load(detectors, dtype)
    missing = [c for c in ids if c not in evaluator.detectors]
    if missing:
        raise ValueError(f"{detectors} has no detector for concept(s) {missing}: run `prosv-jax axbench detectors "
                         f"--concepts {','.join(map(str, missing))}` into it first")
    generator = Generator(model, dtype, batch_size=batch_size)
    lines = _read_lines(out)
    done = {line["concept_id"] for line in lines}
    summary = {}
    for cid in ids:
        if cid in done:
            log(f"concept {cid}: already in {out}")
            continue
        instructions = [i for i, _ in axbench.concept_positives(split, cid)][:max_examples or None]
        texts = [a.text for a in generator(instructions, max_new_tokens=max_new_tokens)]
        p = evaluator.concept_probability(cid, [t if t.strip() else "." for t in texts])
        drawn = ["greedy"] * len(texts)
        for seed in range(1, retries + 1):
            redo = [k for k in range(len(texts)) if p[k] >= threshold]
            if not redo:
                break
            again = [a.text for a in generator([instructions[k] for k in redo], max_new_tokens=max_new_tokens,
                                               temperature=1.0, seed=seed)]
            p_again = evaluator.concept_probability(cid, [t if t.strip() else "." for t in again])
            for k, text, q in zip(redo, again, p_again):
                if q < p[k]:
                    texts[k], p[k], drawn[k] = text, q, f"sampled, temperature 1, seed {seed}"
        lines += [{"concept_id": cid, "instruction": i, "output": t, "p_concept": round(float(q), 4), "drawn": d}
                  for i, t, q, d in zip(instructions, texts, p, drawn)]
        write_atomic(out, "".join(json.dumps(line) + "\n" for line in lines))
        above = int(np.sum(p >= threshold))
        summary[cid] = {"answers": len(texts), "above_threshold": above, "resampled": sum(d != "greedy" for d in drawn)}
        log(f"concept {cid}: {len(texts)} negatives, {summary[cid]['resampled']} re-sampled, {above} still carry the "
            f"concept (P >= {threshold})")
    return summary


def _read_lines(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
