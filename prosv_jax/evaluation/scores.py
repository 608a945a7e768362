"""AxBench steering score (method.md section 4).

* answer score: harmonic mean of the three ratings (concept, instruction, fluency), each 0, 1 or 2; 0 if any is 0;
* concept score: the mean over the concept's answers;
* overall score: the mean over concepts (scale 0-2).

An *answer's ratings* may be given as a ``(concept, instruction, fluency)`` tuple, as a mapping with those keys
(values numbers or :class:`~prosv_jax.evaluation.judges.Rating` objects), or as a bare number (an answer score that is
already computed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

from .rubric import FACTORS

DEFAULT_SELECT_ON = range(0, 5)
DEFAULT_REPORT_ON = range(5, 10)


def harmonic_mean_score(concept: float, instruction: float, fluency: float) -> float:
    """The answer score: ``3 / (1/c + 1/i + 1/f)``, and 0 if any rating is 0."""
    vals = (float(concept), float(instruction), float(fluency))
    for v in vals:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"ratings must be finite and >= 0, got {vals}")
    if any(v == 0 for v in vals):
        return 0.0
    return 3.0 / sum(1.0 / v for v in vals)


def _value(x: Any) -> float:
    return float(getattr(x, "value", x))


def ratings_triple(item: Any) -> tuple[float, float, float]:
    """``(concept, instruction, fluency)`` from a tuple or a mapping keyed by factor (values numbers or Ratings)."""
    if isinstance(item, Mapping):
        missing = [f for f in FACTORS if f not in item]
        if missing:
            raise ValueError(f"answer ratings lack factor(s) {missing}; expected keys {list(FACTORS)}")
        return tuple(_value(item[f]) for f in FACTORS)  # type: ignore[return-value]
    if isinstance(item, (tuple, list)) and len(item) == 3:
        return tuple(_value(v) for v in item)  # type: ignore[return-value]
    raise TypeError(f"answer ratings must be a (concept, instruction, fluency) triple or a mapping with keys "
                    f"{list(FACTORS)}, got {item!r}")


def answer_score(item: Any) -> float:
    """The score of one answer from its ratings (see module doc for accepted forms)."""
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        return float(item)
    return harmonic_mean_score(*ratings_triple(item))


def _mean(xs: Sequence[float], what: str) -> float:
    if len(xs) == 0:
        raise ValueError(f"cannot average an empty list of {what}")
    return float(sum(xs)) / len(xs)


def concept_score(answers: Sequence[Any]) -> float:
    """Mean answer score over one concept's answers."""
    return _mean([answer_score(a) for a in answers], "answers")


def overall_score(concept_scores: Mapping[Hashable, float] | Sequence[float]) -> float:
    """Mean over concepts."""
    vals = list(concept_scores.values()) if isinstance(concept_scores, Mapping) else list(concept_scores)
    return _mean(vals, "concept scores")


@dataclass
class ConceptScores:
    """Scores of a set of concepts: ``per_answer[cid][k]``, ``per_concept[cid]``, ``overall``, and the mean of each
    rating per concept, ``factor_means[cid] = {"concept": ..., "instruction": ..., "fluency": ...}`` (absent for
    answers given as bare scores)."""

    per_answer: dict[Hashable, list[float]]
    per_concept: dict[Hashable, float]
    overall: float
    factor_means: dict[Hashable, dict[str, float]] = field(default_factory=dict)


def score_concepts(answers_by_concept: Mapping[Hashable, Sequence[Any]]) -> ConceptScores:
    """Score every concept: ``{concept_id: [answer ratings, ...]}`` -> :class:`ConceptScores`."""
    if not answers_by_concept:
        raise ValueError("no concepts to score")
    per_answer: dict[Hashable, list[float]] = {}
    factor_means: dict[Hashable, dict[str, float]] = {}
    for cid, answers in answers_by_concept.items():
        if len(answers) == 0:
            raise ValueError(f"concept {cid!r} has no answers to score")
        per_answer[cid] = [answer_score(a) for a in answers]
        if not any(isinstance(a, (int, float)) for a in answers):
            triples = [ratings_triple(a) for a in answers]
            factor_means[cid] = {f: _mean([t[j] for t in triples], f) for j, f in enumerate(FACTORS)}
    per_concept = {cid: _mean(s, "answers") for cid, s in per_answer.items()}
    return ConceptScores(per_answer=per_answer, per_concept=per_concept, overall=overall_score(per_concept),
                         factor_means=factor_means)


@dataclass
class FactorSelection:
    """Result of :func:`select_factor`.

    ``chosen[cid]``: the factor picked for each concept; ``scores[cid]``: its mean answer score on the report half;
    ``selection_scores[cid][factor]``: every factor's mean on the selection half; ``overall``: mean of ``scores``.
    """

    chosen: dict[Hashable, Any]
    scores: dict[Hashable, float]
    selection_scores: dict[Hashable, dict[Any, float]]
    overall: float


def _sort_key(x: Any):
    return (0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x))


def choose_factor(by_factor: Mapping[Any, Sequence[Any]], select_on: Sequence[int] = DEFAULT_SELECT_ON,
                  what: str = "") -> tuple[Any, dict[Any, float]]:
    """(the factor with the best mean answer score on instructions ``select_on``, every factor's mean there) for one
    concept's ``{factor: answer ratings by instruction position}``; ties go to the smallest factor. Only the
    selection half is read, so a factor whose report half was never answered is still a candidate."""
    if not by_factor:
        raise ValueError(f"{what or 'a concept'} has no factors")
    need = max(select_on) + 1
    sel: dict[Any, float] = {}
    for factor in sorted(by_factor, key=_sort_key):
        answers = by_factor[factor]
        if len(answers) < need:
            raise ValueError(f"{what or 'a concept'}, factor {factor!r}: {len(answers)} answers, but the selection "
                             f"needs instructions up to index {need - 1}")
        sel[factor] = _mean([answer_score(answers[k]) for k in select_on], "answers")
    best = max(sel.values())
    return next(f for f, s in sel.items() if s == best), sel  # first in sorted order


def select_factor(ratings_by_factor: Mapping[Hashable, Mapping[Any, Sequence[Any]]],
                  select_on: Sequence[int] = DEFAULT_SELECT_ON,
                  report_on: Sequence[int] = DEFAULT_REPORT_ON) -> FactorSelection:
    """AxBench factor selection for methods with a free steering factor.

    ``ratings_by_factor[concept_id][factor]`` is the list of answer ratings for that concept at that factor, indexed by
    instruction position (0-9 for the 10 sampled instructions).  For each concept, the factor with the best mean answer
    score on instructions ``select_on`` (0-4) is chosen, and the concept's score is that factor's mean on instructions
    ``report_on`` (5-9), so the held-out half is never used for the choice.  Ties go to the smallest factor (numbers in
    ascending order, otherwise by string).  Only the chosen factor needs its report half: a grid answered in protocol
    order (every factor on 0-4, then the chosen one on 5-9) scores the same as a full grid.
    """
    select_on, report_on = list(select_on), list(report_on)
    if not select_on or not report_on:
        raise ValueError("select_on and report_on must be non-empty")
    if set(select_on) & set(report_on):
        raise ValueError(f"select_on {select_on} and report_on {report_on} overlap")
    if not ratings_by_factor:
        raise ValueError("no concepts to select factors for")
    need = max(report_on) + 1
    chosen: dict[Hashable, Any] = {}
    scores: dict[Hashable, float] = {}
    selection_scores: dict[Hashable, dict[Any, float]] = {}
    for cid, by_factor in ratings_by_factor.items():
        factor, selection_scores[cid] = choose_factor(by_factor, select_on, f"concept {cid!r}")
        answers = by_factor[factor]
        if len(answers) < need:
            raise ValueError(f"concept {cid!r}: the chosen factor {factor!r} has {len(answers)} answers, but its "
                             f"report half needs instructions up to index {need - 1}; answer them at that factor "
                             "(`axbench generate --report-half`)")
        chosen[cid] = factor
        scores[cid] = _mean([answer_score(answers[k]) for k in report_on], "answers")
    return FactorSelection(chosen=chosen, scores=scores, selection_scores=selection_scores,
                           overall=overall_score(scores))
