"""Rubric prompts for the AxBench-style steering judge, and parsing of the judge's rating.

Three questions are asked about every steered answer (method.md section 4):

* ``concept``     -- is the concept present in the answer?
* ``instruction`` -- is the answer related to the instruction?
* ``fluency``     -- is the answer fluent?

Each is answered with a rating 0, 1 or 2 on a final line ``Rating: [[N]]``, read by :func:`parse_rating` (the paper
code's parse by default, AxBench's lenient one as an option).  The default prompts below were written by
this project (they are not AxBench's wording).  A user may instead point to the official AxBench templates, saved as a
JSON file (see :func:`load_rubric_templates`).

Placeholders are substituted literally, in a single pass: ``{concept}``, ``{instruction}`` and ``{answer}`` are
replaced and every other brace is left alone, so templates may contain JSON examples or other braces without escaping,
and text inside an answer (e.g. the string ``{concept}``) is never substituted again.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Mapping

FACTORS: tuple[str, ...] = ("concept", "instruction", "fluency")
"""The three rubric questions, in the order used everywhere in :mod:`prosv_jax.evaluation`."""

DEFAULT_RATING: int = 0
"""The rating a malformed judge reply counts as (AxBench counts an unparsable rating as 0)."""

VALID_RATINGS: tuple[int, ...] = (0, 1, 2)

PLACEHOLDERS: tuple[str, ...] = ("concept", "instruction", "answer")

# Placeholders each template must contain.
REQUIRED_PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "concept": ("concept", "answer"),
    "instruction": ("instruction", "answer"),
    "fluency": ("answer",),
}

_RATING_LINE = """Give a one-sentence justification first. Then end your reply with a final line in exactly this form:
Rating: [[N]]
where N is 0, 1 or 2."""

CONCEPT_TEMPLATE = """Criterion: concept presence.
You are grading a response on one criterion only: whether it brings in a given concept.

Concept: {concept}

Response to grade:
<<<BEGIN RESPONSE>>>
{answer}
<<<END RESPONSE>>>

Rate how clearly the concept is present in the response:
0 - the concept is absent.
1 - the concept appears only weakly, indirectly or in passing.
2 - the concept is clearly and explicitly present.
Judge only whether the concept is present; ignore whether the response is helpful, on topic or fluent.
""" + _RATING_LINE

INSTRUCTION_TEMPLATE = """Criterion: instruction relevance.
You are grading a response on one criterion only: whether it addresses the instruction it was given.

Instruction:
<<<BEGIN INSTRUCTION>>>
{instruction}
<<<END INSTRUCTION>>>

Response to grade:
<<<BEGIN RESPONSE>>>
{answer}
<<<END RESPONSE>>>

Rate how well the response relates to the instruction:
0 - the response is unrelated to the instruction or ignores it.
1 - the response is partly related: it drifts away or addresses only part of the instruction.
2 - the response clearly addresses the instruction.
Unrelated topics that the response also mentions do not lower the rating as long as the instruction is addressed.
Ignore fluency. The response may be cut off at a length limit; do not penalize that.
""" + _RATING_LINE

FLUENCY_TEMPLATE = """Criterion: fluency.
You are grading a response on one criterion only: whether it is fluent text.

Response to grade:
<<<BEGIN RESPONSE>>>
{answer}
<<<END RESPONSE>>>

Rate the fluency of the response:
0 - not fluent: broken, incoherent or degenerate text (e.g. heavy repetition or word salad).
1 - somewhat fluent: understandable, but with awkward phrasing, errors or repetition.
2 - fluent: natural, grammatical and coherent.
Judge only the language, not relevance or content. The response may be cut off at a length limit; do not penalize
that.
""" + _RATING_LINE


@dataclass(frozen=True)
class RubricTemplates:
    """The three rubric templates (one per factor), plus where they came from (``"prosv-jax default"`` or a path)."""

    concept: str = CONCEPT_TEMPLATE
    instruction: str = INSTRUCTION_TEMPLATE
    fluency: str = FLUENCY_TEMPLATE
    source: str = "prosv-jax default"

    def __post_init__(self):
        for factor in FACTORS:
            validate_template(factor, getattr(self, factor))

    def template(self, factor: str) -> str:
        """The raw template text for ``factor`` (one of :data:`FACTORS`)."""
        _check_factor(factor)
        return getattr(self, factor)

    def render(self, factor: str, *, concept: str, instruction: str, answer: str) -> str:
        """The judge prompt for one answer and one factor."""
        return render_template(self.template(factor), concept=concept, instruction=instruction, answer=answer)



_PLACEHOLDER_RE = re.compile(r"\{(concept|instruction|answer)\}")


def _check_factor(factor: str) -> None:
    if factor not in FACTORS:
        raise ValueError(f"unknown rubric factor {factor!r}; expected one of {FACTORS}")


def validate_template(factor: str, text: object) -> None:
    """Raise ``ValueError`` unless ``text`` is a string holding the placeholders ``factor`` needs."""
    _check_factor(factor)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"rubric template {factor!r} must be a non-empty string, got {type(text).__name__}")
    missing = [p for p in REQUIRED_PLACEHOLDERS[factor] if "{" + p + "}" not in text]
    if missing:
        need = ", ".join("{" + p + "}" for p in REQUIRED_PLACEHOLDERS[factor])
        raise ValueError(f"rubric template {factor!r} lacks placeholder(s) "
                         f"{', '.join('{' + p + '}' for p in missing)} (it needs {need})")


def render_template(template: str, *, concept: str, instruction: str, answer: str) -> str:
    """Replace ``{concept}``, ``{instruction}``, ``{answer}`` literally, in one pass; leave other braces alone."""
    values = {"concept": str(concept), "instruction": str(instruction), "answer": str(answer)}
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def load_rubric_templates(path: str | os.PathLike) -> RubricTemplates:
    """Load rubric templates (e.g. the official AxBench ones) from a JSON file.

    Expected format: a JSON object with the keys ``"concept"``, ``"instruction"`` and ``"fluency"``, each a template
    string.  Placeholders: ``{concept}`` and ``{answer}`` in ``"concept"``; ``{instruction}`` and ``{answer}`` in
    ``"instruction"``; ``{answer}`` in ``"fluency"`` (the other placeholders may also appear; all three are substituted
    literally and other braces are kept as they are).  Each template should ask for a final line ``Rating: [[N]]``
    with N in 0, 1, 2 so that :func:`parse_rating` can read the reply.  Other keys are ignored.

    Example::

        {"concept": "... {concept} ... {answer} ... Rating: [[score]]",
         "instruction": "... {instruction} ... {answer} ...",
         "fluency": "... {answer} ..."}
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"rubric template file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"rubric template file {path} is not valid JSON: {e}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"rubric template file {path} must hold a JSON object with keys {list(FACTORS)}, "
                         f"got a {type(data).__name__}")
    missing = [k for k in FACTORS if k not in data]
    if missing:
        raise ValueError(f"rubric template file {path} lacks key(s) {missing}; expected keys {list(FACTORS)}")
    try:
        return RubricTemplates(concept=data["concept"], instruction=data["instruction"], fluency=data["fluency"],
                               source=path)
    except ValueError as e:
        raise ValueError(f"rubric template file {path}: {e}") from None


RATING_PARSES: tuple[str, ...] = ("paper", "axbench")
"""How a judge reply becomes a rating (method.md section 4): ``"paper"`` (the default) as the paper's code, the last
``Rating: [[N]]``; ``"axbench"`` as AxBench's code, the text after the last ``Rating:``, leniently."""

_PAPER_RE = re.compile(r"Rating:\s*\[\[\s*([0-9]+)\s*\]\]")


def check_parse(parse: str) -> str:
    if parse not in RATING_PARSES:
        raise ValueError(f"unknown rating parse {parse!r}; expected one of {RATING_PARSES} (paper: the last "
                         "'Rating: [[N]]', as the paper's code; axbench: AxBench's lenient parse)")
    return parse


def _parse_paper(text: str) -> float | None:
    """The last ``Rating: [[N]]`` (N an integer 0, 1 or 2), else None."""
    matches = _PAPER_RE.findall(text)
    if not matches or int(matches[-1]) not in VALID_RATINGS:
        return None
    return float(matches[-1])


def _parse_axbench(text: str) -> float | None:
    """AxBench's parse: the first line after the last ``Rating:``, with ``[``/``]`` removed and trailing ``.``,
    quotes and ``*`` stripped, read as a float in [0, 2]; else None."""
    if "Rating:" not in text:
        return None
    value = text.split("Rating:")[-1].strip().split("\n")[0].strip()
    value = value.replace("[", "").replace("]", "").rstrip(".").strip('"').strip("'").strip("*").strip()
    try:
        rating = float(value)
    except ValueError:
        return None
    return rating if 0.0 <= rating <= 2.0 else None


def parse_rating(text: str | None, parse: str = "paper") -> tuple[float, bool]:
    """Read the judge's rating from its reply: ``(rating, ok)``.

    ``parse="paper"`` (default): the last ``Rating: [[N]]`` with N in 0, 1, 2, as the paper's code reads it;
    ``parse="axbench"``: AxBench's lenient parse (``Rating: 2``, ``Rating: **1.5**``, any float in [0, 2]).  A reply the
    parse cannot read is *malformed*: it counts as :data:`DEFAULT_RATING` (0), as in both reference codes, and
    ``ok`` is False so callers can count it.
    """
    check_parse(parse)
    if not isinstance(text, str) or not text:
        return float(DEFAULT_RATING), False
    value = _parse_paper(text) if parse == "paper" else _parse_axbench(text)
    return (float(DEFAULT_RATING), False) if value is None else (value, True)


DEFAULT_TEMPLATES = RubricTemplates()
"""The rubric written by this project."""
