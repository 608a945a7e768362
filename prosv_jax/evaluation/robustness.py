"""The suppression attack (method.md section 4): each evaluation instruction rewritten to tell the model to avoid the
concept; the steering must still bring the concept in. The rewrites come from a file, a fixed template, or the judge
LLM (formats and prompts in `concept_prompts`). The attacked answers are then generated, judged and scored like the
clean ones (`answers.run_generate` with `attack="suppression"`), FSSV typically at several factor scales.
"""

from __future__ import annotations

from typing import Callable

from .concept_prompts import (SUPPRESSION_REWRITE_PROMPT, llm_texts, load_attack_file, suppression_from_template)

ATTACK_KINDS = ("file", "template", "llm")


def make_attack(kind: str, path: str | None = None, judge_kwargs: dict | None = None,
                log: Callable[[str], None] = print) -> Callable[[dict], dict]:
    """attack({cid: (concept, [(instruction index, text), ...])}) -> {(cid, index): rewritten instruction}."""
    if kind not in ATTACK_KINDS:
        raise ValueError(f"attack kind must be one of {ATTACK_KINDS}, got {kind!r}")
    if kind == "file" and not path:
        raise ValueError("the file attack needs --attack-file FILE")

    def attack(jobs: dict) -> dict:
        if kind == "file":
            return load_attack_file(path, {cid: [i for i, _ in sample] for cid, (_, sample) in jobs.items()})
        if kind == "template":
            return {(cid, i): suppression_from_template(concept, text) for cid, (concept, sample) in jobs.items()
                    for i, text in sample}
        keys = [(cid, i) for cid, (_, sample) in jobs.items() for i, _ in sample]
        items = [(concept, text) for cid, (concept, sample) in jobs.items() for _, text in sample]
        texts, stats = llm_texts(SUPPRESSION_REWRITE_PROMPT, items, **(judge_kwargs or {}))
        log(f"suppression rewrites by the judge LLM: {len(texts)} ({stats['requests_sent']} requests, "
            f"{stats['cache_hits']} cached)")
        return dict(zip(keys, texts))

    return attack
