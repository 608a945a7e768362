"""Sacrifice, judge-free: what a steering costs the model on text that has nothing to do with its concept.

The steered model's per-token negative log-likelihood of GPT-4's AlpacaEval reference answers (bundled), each
given its chat-templated instruction, minus the unsteered model's. 0 means the steering leaves ordinary answers as
likely as before; a prompt-only steering is expected to cost less than one on every token (method.md). The
prompting baseline's sacrifice is the same difference with its steering prompt before each instruction.

Stage `axbench sacrifice` (`run_sacrifice`) writes into its output folder:

- `sacrifice.json`: the stage's settings (a rerun with other settings into the same folder is refused);
- `c<concept id>.json`: the concept's rows, written atomically once done (a rerun skips the concept);
- `sacrifice.csv`: every row (method, concept_id, run, factor, nll_steered, nll_unsteered, sacrifice, n_tokens).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Callable, Sequence

import numpy as np

SETTINGS_FILE, TABLE_FILE = "sacrifice.json", "sacrifice.csv"
COLUMNS = ("method", "concept_id", "run", "factor", "nll_steered", "nll_unsteered", "sacrifice", "n_tokens")

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


def chosen_factors(report_dir: str, method: str) -> dict[int, float]:
    """{concept id: factor} that AxBench's factor selection chose for `method` in an `axbench score` folder."""
    from .records import read_json

    groups = [g for g in read_json(os.path.join(report_dir, "scores.json"))["groups"]
              if g["method"] == method and not g["attack"]]
    if len(groups) != 1 or not groups[0]["factor_selection"]:
        found = sorted({g["method"] for g in read_json(os.path.join(report_dir, "scores.json"))["groups"]})
        raise ValueError(f"{report_dir}: expected one factor-selected, unattacked group of method {method!r}, found "
                         f"{len(groups)} (methods there: {found})")
    return {int(cid): float(row["chosen_factor"]) for cid, row in groups[0]["per_concept"].items()}


def _rows_table(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([[r[c] for c in COLUMNS] for r in rows])
    return buffer.getvalue()


def run_sacrifice(model: str, out: str, *, runs: str | None = None, prompting_file: str | None = None,
                  split: str | None = None, concepts: Sequence[int] | None = None, factors_from: str | None = None,
                  method: str | None = None, n_pairs: int = 32, max_answer: int = 128, batch_size: int = 16,
                  dtype: str = "float32", chat: bool = True, log: Callable[[str], None] = print) -> list[dict]:
    """Sacrifice of every steering of `runs` (at its trained factor, or at the factor `factors_from`, an `axbench
    score` folder, chose for `method`) or of the prompting baseline (`prompting_file`); returns every row.
    Resumes concept by concept."""
    from prosv_jax.data.bundled import BUNDLED_SPLIT
    from prosv_jax.files import write_atomic, write_json
    from prosv_jax.inference.prompts import prompt_ids

    from .concept_prompts import load_prompting_file, prompting_prompt
    from .generation import Generator
    from .likelihood import answer_logprobs
    from .records import check_same_settings, read_json
    from .runs import check_concepts, concept_table, find_runs, split_of_runs

    if bool(runs) == bool(prompting_file):
        raise ValueError("give --runs TRAIN (steerings) or --prompting-file F (the prompting baseline), one of them")
    if factors_from and not method:
        raise ValueError("--factors-from needs --method: the method label whose chosen factors to use")
    found = find_runs(runs, log=log) if runs else []
    split = split or (split_of_runs(runs) if runs else None)
    if not split:
        raise ValueError("no AxBench split to read the concepts from: give --split")
    split = split if split == BUNDLED_SPLIT else os.path.abspath(split)
    table = concept_table(split)
    ids = sorted({int(c) for c in concepts}) if concepts else (
        sorted({r.concept_id for r in found}) if found else sorted(table))
    check_concepts(ids, table, split)
    if found and [c for c in ids if not any(r.concept_id == c for r in found)]:
        raise ValueError(f"{runs}: no trained steering for concept(s) "
                         f"{[c for c in ids if not any(r.concept_id == c for r in found)]}")
    chosen = chosen_factors(factors_from, method) if factors_from else None
    if chosen is not None and [c for c in ids if c not in chosen]:
        raise ValueError(f"{factors_from}: method {method!r} has no chosen factor for concept(s) "
                         f"{[c for c in ids if c not in chosen]}; score those concepts first")
    label = method or os.path.basename(os.path.normpath(runs or prompting_file))
    stored = {"model": model, "runs": os.path.abspath(runs) if runs else None,
              "prompting_file": os.path.abspath(prompting_file) if prompting_file else None, "split": split,
              "factors_from": os.path.abspath(factors_from) if factors_from else None, "method": label,
              "n_pairs": n_pairs, "max_answer": max_answer, "dtype": dtype, "chat": chat,
              "pairs": "GPT-4's AlpacaEval answers, reference_pairs(n_pairs)"}
    os.makedirs(out, exist_ok=True)
    check_same_settings(out, SETTINGS_FILE, stored, "sacrifice results")
    write_json(os.path.join(out, SETTINGS_FILE), stored)
    todo = [c for c in ids if not os.path.isfile(os.path.join(out, f"c{c}.json"))]
    if len(todo) < len(ids):
        log(f"sacrifice: already measured concept(s) {[c for c in ids if c not in todo]}")
    if todo:
        gen = Generator(model, dtype, batch_size)
        pairs = reference_pairs(n_pairs)
        answers = [gen.tokenizer(a, add_special_tokens=False)["input_ids"] for _, a in pairs]
        options = dict(batch_size=batch_size, max_answer=max_answer)

        def nll(instructions, steering=None, params=None):
            examples = [(prompt_ids(gen.tokenizer, i, chat), a) for i, a in zip(instructions, answers)]
            sums, counts = answer_logprobs(gen.model, examples, steering=steering, params=params, **options)
            return float(-sums.sum() / counts.sum()), int(counts.sum())

        plain, n_tokens = nll([i for i, _ in pairs])
        prompts = load_prompting_file(prompting_file, todo) if prompting_file else None
        for cid in todo:
            rows = []
            if prompts is not None:
                steered, _ = nll([prompting_prompt(prompts[cid], i) for i, _ in pairs])
                rows.append({"run": None, "factor": None, "nll_steered": steered})
            for run in (r for r in found if r.concept_id == cid):
                steering, params = gen.load_steering(run.path)
                factor = None if chosen is None else chosen[cid]
                if factor is not None:
                    params = steering.with_factor(params, np.float32(factor))
                steered, _ = nll([i for i, _ in pairs], steering, params)
                rows.append({"run": run.name, "factor": factor, "nll_steered": steered})
            rows = [{"method": label, "concept_id": cid, **r, "nll_unsteered": plain,
                     "sacrifice": r["nll_steered"] - plain, "n_tokens": n_tokens} for r in rows]
            write_json(os.path.join(out, f"c{cid}.json"), rows)
            log(f"sacrifice: concept {cid}: " + ", ".join(f"{r['sacrifice']:+.4f}" for r in rows))
    every = [row for c in ids for row in read_json(os.path.join(out, f"c{c}.json"))]
    write_atomic(os.path.join(out, TABLE_FILE), _rows_table(every))
    return every
