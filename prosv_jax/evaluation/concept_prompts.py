"""User text per concept: the prompting baseline's steering prompts and the suppression attack's rewritten
instructions; read from files, made by a template, or written by the judge LLM.

Prompting file (JSONL, one line per concept):

    {"concept_id": 0, "prompt": "Whatever the question, work in a mention of ..."}

The model is then asked `PROMPTING_FORMAT` = "{prompt}\\n\\nQuestion: {instruction}" as one user message, the
reference's format (method.md section 4; also under the suppression attack).

Suppression-attack file (JSONL, one line per (concept, instruction)):

    {"concept_id": 0, "instruction_index": 123, "instruction": "<instruction 123 rewritten to avoid concept 0>"}

`instruction_index` is the instruction's index in AlpacaEval's instructions.json (the 10 instructions of a concept are
`sample_instructions(instructions, concept_id)`); every sampled instruction of every evaluated concept needs a line.
Without a file, `SUPPRESSION_TEMPLATE` appends an explicit "do not mention the concept" request to the instruction, or
the judge LLM rewrites each instruction with `SUPPRESSION_REWRITE_PROMPT` (see `llm_texts`).
"""

from __future__ import annotations

import os
from typing import Sequence

from .judges import OpenAIJudge, RatingRequest, cache_key
from .records import read_jsonl
from .rubric import render_template

PROMPTING_FORMAT = "{prompt}\n\nQuestion: {instruction}"

SUPPRESSION_TEMPLATE = ("{instruction}\n\nImportant: in your answer, do not mention, hint at or allude to anything "
                        "related to the following concept: {concept}.")

SUPPRESSION_REWRITE_PROMPT = """Rewrite the instruction below so that it also tells the assistant to avoid a concept.
Keep the original task unchanged; add an explicit request not to mention, hint at or allude to the concept.

Concept to avoid: {concept}

Instruction:
<<<BEGIN INSTRUCTION>>>
{instruction}
<<<END INSTRUCTION>>>

Reply with the rewritten instruction only, between the lines <<<BEGIN REWRITE>>> and <<<END REWRITE>>>."""

STEERING_PROMPT_PROMPT = """Write a short system-style prompt that makes an assistant bring the following concept \
into every answer, whatever the question, while still answering the question fluently.

Concept: {concept}

Reply with the prompt only, between the lines <<<BEGIN REWRITE>>> and <<<END REWRITE>>>."""

# The steering prompt without a judge LLM (`axbench prompts --template`): AxBench's prompts are written by
# gpt-4o-mini; this fixed sentence is the offline stand-in (the study says which one it used).
STEERING_PROMPT_TEMPLATE = ("Whatever the question, your answer must also be about the following concept, and "
                            "mention it clearly: {concept}.")

PROMPTING_FIELDS = ("concept_id", "prompt")
ATTACK_FIELDS = ("concept_id", "instruction_index", "instruction")


def prompting_prompt(prompt: str, instruction: str) -> str:
    """PROMPTING_FORMAT filled in: the steering prompt, a blank line, "Question: " and the instruction."""
    return f"{prompt}\n\nQuestion: {instruction}"


def steering_prompt_from_template(concept: str) -> str:
    return render_template(STEERING_PROMPT_TEMPLATE, concept=concept, instruction="", answer="")


def suppression_from_template(concept: str, instruction: str) -> str:
    return render_template(SUPPRESSION_TEMPLATE, concept=concept, instruction=instruction, answer="")


def load_prompting_file(path: str | os.PathLike, concept_ids: Sequence[int]) -> dict[int, str]:
    """{concept id: steering prompt} for every id in `concept_ids`; an id without a line is an error."""
    rows = read_jsonl(path, PROMPTING_FIELDS, "prompting line")
    prompts: dict[int, str] = {}
    for row in rows:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise ValueError(f"{path}: concept {row['concept_id']} has an empty prompt")
        prompts[int(row["concept_id"])] = row["prompt"]
    missing = sorted(set(int(c) for c in concept_ids) - set(prompts))
    if missing:
        raise ValueError(f"{path}: no steering prompt for concept id(s) {missing} (one JSONL line "
                         '{"concept_id": ..., "prompt": ...} per evaluated concept)')
    return prompts


def load_attack_file(path: str | os.PathLike, needed: dict[int, Sequence[int]]) -> dict[tuple[int, int], str]:
    """{(concept id, instruction index): rewritten instruction} for every needed pair (needed: {cid: indices})."""
    rows = read_jsonl(path, ATTACK_FIELDS, "attack line")
    found = {(int(r["concept_id"]), int(r["instruction_index"])): str(r["instruction"]) for r in rows}
    missing = [(c, i) for c, idx in needed.items() for i in idx if (int(c), int(i)) not in found]
    if missing:
        raise ValueError(f"{path}: no rewritten instruction for {len(missing)} (concept_id, instruction_index) "
                         f"pair(s), first {missing[:3]}; every sampled instruction of every evaluated concept needs "
                         "a line")
    return {k: found[k] for k in ((int(c), int(i)) for c, idx in needed.items() for i in idx)}


class _TextWriter(OpenAIJudge):
    """The judge's HTTP client (retries, cache, key hygiene) asked for free text with one prompt template."""

    def __init__(self, prompt_template: str, **kwargs):
        super().__init__(**kwargs)
        self.prompt_template = prompt_template

    def key(self, request: RatingRequest) -> str:
        return cache_key(self.prompt_template, request, self.model, self.system_prompt, self.sampling())

    def messages(self, request: RatingRequest) -> list[dict[str, str]]:
        prompt = render_template(self.prompt_template, concept=request.concept, instruction=request.instruction,
                                 answer="")
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": prompt}]


MARKERS = ("<<<BEGIN REWRITE>>>", "<<<END REWRITE>>>")


def extract_text(reply: str) -> str | None:
    """The text between <<<BEGIN REWRITE>>> and <<<END REWRITE>>>, stripped; None when the reply lacks the markers
    (a refusal or an off-format reply must not become a steering prompt or an instruction)."""
    start, end = MARKERS
    if start not in reply or end not in reply.split(start, 1)[1]:
        return None
    return reply.split(start, 1)[1].split(end, 1)[0].strip()


def llm_texts(prompt_template: str, items: Sequence[tuple[str, str]], **judge_kwargs) -> tuple[list[str], dict]:
    """Free text from the judge endpoint for each (concept, instruction): (texts, request counters).

    `judge_kwargs` are OpenAIJudge's (model, base_url, cache_dir, ...; the key comes from the environment).
    A failing endpoint raises JudgeError; finished replies are cached. A reply without the markers, or with nothing
    between them, is an error that quotes it.
    """
    writer = _TextWriter(prompt_template, **judge_kwargs)
    requests = [RatingRequest("concept", concept, instruction, "") for concept, instruction in items]
    ratings = writer.rate(requests)
    texts = [extract_text(r.reply) for r in ratings]
    bad = [i for i, t in enumerate(texts) if not t]
    if bad:
        first = ratings[bad[0]].reply
        raise ValueError(f"the judge LLM {writer.model!r} did not write the text between {MARKERS[0]} and "
                         f"{MARKERS[1]} for {len(bad)} of {len(items)} request(s) (first, concept "
                         f"{items[bad[0]][0]!r}: {first[:120]!r}): use a model that follows the format "
                         "(--judge-model), or write the file by hand")
    stats = writer.stats.as_dict()
    stats.pop("malformed", None)  # free text has no rating to parse
    return texts, stats
