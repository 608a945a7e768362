"""AxBench concept10 concepts from the bundled rows, and a judge-free check of concept presence in text.

`concept_lexicon` finds the words a concept's training responses use far more often than ordinary answers
(GPT-4's AlpacaEval outputs); `concept_word_rate` is the share of texts that contain one of them. It is a cheap
proxy for AxBench's LLM-judged concept score, good enough to see steering work offline, not a benchmark number.
"""

from __future__ import annotations

import collections
import functools
import gzip
import importlib.resources
import json
import re
from typing import Iterable, Sequence


_WORD = re.compile(r"[a-z]{4,}")

Pair = tuple[str, str]  # (instruction, response)


def _asset_json_gz(name: str):
    resource = importlib.resources.files("prosv_jax") / "assets" / name
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return json.load(f)


@functools.cache
def alpaca_gpt4_pairs() -> list[dict]:
    """The 805 AlpacaEval instructions with GPT-4's reference answers: [{"instruction", "output"}] (bundled)."""
    return _asset_json_gz("alpaca_eval_gpt4_outputs.json.gz")


@functools.cache
def axbench_concept10_rows() -> list[dict]:
    """AxBench concept10 (prod_2b_l10_v1) training rows: [{"input", "output", "output_concept", "concept_id"}].

    216 shared negatives first (concept_id -1, output_concept "EEEEE"), then 72 positives per concept 0..9.
    """
    return _asset_json_gz("axbench_concept10_2b_l10_train.json.gz")


def concept10_descriptions() -> dict[int, str]:
    """{concept id: description} of the bundled AxBench concept10 split (ids 0..9)."""
    out = {}
    for row in axbench_concept10_rows():
        if row["concept_id"] >= 0:
            out.setdefault(row["concept_id"], row["output_concept"])
    return out


def concept10_split(concept_id: int, heldout: int) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs) of one bundled concept: its 72 examples in file order, the last
    `heldout` kept out of training to score runs on text they never saw."""
    known = concept10_descriptions()
    if concept_id not in known:
        raise ValueError(f"concept {concept_id} is not in the bundled AxBench concept10 split; choose one of "
                         f"{sorted(known)}")
    pairs = [(r["input"], r["output"]) for r in axbench_concept10_rows() if r["concept_id"] == concept_id]
    if not 0 < heldout < len(pairs):
        raise ValueError(f"heldout must be in 1..{len(pairs) - 1} (concept {concept_id} has {len(pairs)} "
                         f"examples), got {heldout}")
    return pairs[:-heldout], pairs[-heldout:]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def concept_lexicon(concept_texts: Iterable[str], background_texts: Iterable[str] | None = None, *,
                    min_count: int = 4, ratio: float = 20.0, contrast_texts: Iterable[str] | None = None,
                    contrast_ratio: float = 10.0) -> list[str]:
    """Words (4+ letters) seen >= `min_count` times in `concept_texts` and >= `ratio` times more often there than
    in `background_texts` (default: GPT-4's AlpacaEval answers; add-one smoothed), most frequent first.

    With `contrast_texts` (other concepts' texts by the same writer) a word must also be >= `contrast_ratio` times
    more frequent than there: that drops the writer's style words ("akin", "much") that every concept shares."""
    if background_texts is None:
        background_texts = (row["output"] for row in alpaca_gpt4_pairs())
    concept = collections.Counter(w for t in concept_texts for w in _words(t))
    if not concept:
        raise ValueError("concept_lexicon needs concept texts with words in them")
    n_concept = sum(concept.values())

    def enriched(texts: Iterable[str], least: float) -> set[str]:
        counts = collections.Counter(w for t in texts for w in _words(t))
        total = max(sum(counts.values()), 1)
        return {w for w, k in concept.items() if (k / n_concept) / ((counts[w] + 1) / total) >= least}

    keep = enriched(background_texts, ratio)
    if contrast_texts is not None:
        keep &= enriched(contrast_texts, contrast_ratio)
    return sorted((w for w in keep if concept[w] >= min_count), key=lambda w: (-concept[w], w))


def concept10_lexicon(concept_id: int, train_pairs: Sequence[Pair]) -> list[str]:
    """`concept_lexicon` of one concept10 concept's training responses, contrasted with the other concepts' and the
    shared negatives' responses (the same AxBench writer)."""
    others = (r["output"] for r in axbench_concept10_rows() if r["concept_id"] != concept_id)
    return concept_lexicon([response for _, response in train_pairs], contrast_texts=others)


def concept_word_rate(texts: Sequence[str], lexicon: Iterable[str]) -> float:
    """Share of `texts` containing at least one lexicon word."""
    words = set(lexicon)
    if not texts:
        raise ValueError("concept_word_rate needs at least one text")
    return sum(bool(words.intersection(_words(t))) for t in texts) / len(texts)
