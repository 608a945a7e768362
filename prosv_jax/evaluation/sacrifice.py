"""Sacrifice, judge-free: what a steering costs the model on text that has nothing to do with its concept.

The steered model's per-token negative log-likelihood of GPT-4's AlpacaEval reference answers (bundled), each
given its chat-templated instruction, minus the unsteered model's. 0 means the steering leaves ordinary answers as
likely as before; a prompt-only steering is expected to cost less than one on every token (method.md).
"""

from __future__ import annotations

from typing import Sequence

Pair = tuple[str, str]  # (instruction, reference answer)


def reference_pairs(count: int = 32) -> list[Pair]:
    """`count` (instruction, GPT-4 answer) pairs spread evenly over AlpacaEval's 805, in file order."""
    from prosv_jax.concepts import alpaca_gpt4_pairs

    rows = alpaca_gpt4_pairs()
    if not 0 < count <= len(rows):
        raise ValueError(f"count must be in 1..{len(rows)}, got {count}")
    return [(rows[k]["instruction"], rows[k]["output"]) for k in range(0, len(rows), len(rows) // count)][:count]


def sacrifice(model, tokenizer, steering, params, pairs: Sequence[Pair] | None = None, *, chat: bool = True,
              batch_size: int = 16, max_answer: int = 128) -> dict[str, float]:
    """{"nll_steered", "nll_unsteered", "sacrifice" (their difference)}: token-mean NLL of the reference answers
    (default `reference_pairs()`, answers cut to `max_answer` tokens) with and without the steering."""
    from prosv_jax.inference.prompts import prompt_ids

    from .likelihood import answer_logprobs

    pairs = reference_pairs() if pairs is None else list(pairs)
    examples = [(prompt_ids(tokenizer, instruction, chat), tokenizer(answer, add_special_tokens=False)["input_ids"])
                for instruction, answer in pairs]
    options = dict(batch_size=batch_size, max_answer=max_answer)
    steered, counts = answer_logprobs(model, examples, steering=steering, params=params, **options)
    plain, _ = answer_logprobs(model, examples, **options)
    nll_steered, nll_unsteered = -steered.sum() / counts.sum(), -plain.sum() / counts.sum()
    return {"nll_steered": float(nll_steered), "nll_unsteered": float(nll_unsteered),
            "sacrifice": float(nll_steered - nll_unsteered)}
