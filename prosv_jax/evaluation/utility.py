"""Stage `axbench utility`: accuracy on multiple-choice and GSM8K-style files, greedy, with the steerings of the
first K concepts (mean accuracy across them), unsteered, and optionally with the prompting baseline.

Multiple-choice file (tinyMMLU format; JSONL, or a JSON list of the same objects):

    {"question": "...", "choices": ["...", "...", "...", "..."], "answer": 2}

`answer` is the 0-based index of the correct choice (other fields, e.g. "subject", are ignored). The model sees the
question, the choices lettered A, B, C, ... and "Answer with the letter of the correct choice."; its prediction is the
first standalone choice letter of its answer (none: wrong).

GSM8K-style file (tinyGSM8K format; JSONL or JSON list):

    {"question": "...", "answer": "<worked solution> #### 42"}

The gold number is the first number after the last "####" (commas dropped). The model is asked to end with
"#### <number>"; its prediction is the first number after its last "####", else the last number in its answer.

Two protocols (`protocol`):

- "prosv" (default): the zero-shot prompts above, 16 / 256 new tokens, the parses above;
- "reference" (method.md section 4, the paper's code): the few-shot examples (`mc_shots` / `gsm_shots`: files of the
  same schema) become chat turns, each shot's prompt a user turn and its gold answer an assistant turn (the letter;
  the worked solution), then the item's prompt; 128 new tokens for multiple choice, 512 for GSM8K; an MC answer counts
  when the gold letter appears in it (as a standalone letter), a GSM8K answer when any number found scanning from its
  end equals the gold number within 1e-3.

Outputs: `utility.json` ({"rows": [{"method", "setting", "task", "accuracy", "per_concept", "n_items",
"factor_scale"}]}), `utility.csv`, and per (method, task, concept) the predictions under `items/` (written atomically;
a rerun skips what exists). `utility_settings.json` records what the predictions depend on (model, dtype, the item
files' hashes, limit, token limits, runs, prompting file); a rerun into the same folder with other settings is
refused (S2), so stale predictions are never read back as new ones.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from typing import Callable, Sequence

from prosv_jax.files import write_atomic, write_json
from .records import check_same_settings, file_sha256, read_json, read_jsonl, write_jsonl

UTILITY_FILE = "utility.json"
SETTINGS_FILE = "utility_settings.json"
MC_FIELDS = ("question", "choices", "answer")
GSM_FIELDS = ("question", "answer")
LETTERS = "ABCDEFGHIJ"
MC_SUFFIX = "Answer with the letter of the correct choice."
GSM_SUFFIX = "Solve the problem step by step, then give the final answer on its own line as: #### <number>"


def _read_items(path: str, fields: Sequence[str], what: str) -> list[dict]:
    path = os.fspath(path)
    if path.endswith(".json"):
        data = read_json(path)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of {what} objects")
        for n, item in enumerate(data):
            missing = [f for f in fields if not isinstance(item, dict) or f not in item]
            if missing:
                raise ValueError(f"{path}, item {n}: missing field(s) {missing} (a {what} needs {list(fields)})")
    else:
        data = read_jsonl(path, fields, what)
    if not data:
        raise ValueError(f"{path} holds no {what}")
    return data


def load_mc(path: str) -> list[dict]:
    """Multiple-choice items (schema in the module doc), validated."""
    items = _read_items(path, MC_FIELDS, "multiple-choice item")
    for n, item in enumerate(items):
        choices, answer = item["choices"], item["answer"]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
            raise ValueError(f"{path}, item {n}: 'choices' must be a list of 2..{len(LETTERS)} strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(f"{path}, item {n}: 'answer' must be the 0-based index of the correct choice "
                             f"(0..{len(choices) - 1}), got {answer!r}")
    return items


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _number(text: str, first: bool = False) -> float | None:
    """The last (or first) number in `text`, commas and a dollar sign dropped."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[0 if first else -1].replace(",", "").replace("$", ""))
    except ValueError:
        return None


def gsm_gold(answer: str) -> float:
    if "####" not in answer:
        raise ValueError("no '####' before the final number")
    value = _number(answer.rsplit("####", 1)[1], first=True)
    if value is None:
        raise ValueError("no number after '####'")
    return value


def load_gsm(path: str) -> list[dict]:
    """GSM8K-style items (schema in the module doc) with their parsed gold number under "gold"."""
    items = _read_items(path, GSM_FIELDS, "GSM8K-style item")
    out = []
    for n, item in enumerate(items):
        try:
            gold = gsm_gold(str(item["answer"]))
        except ValueError as e:
            raise ValueError(f"{path}, item {n}: 'answer' must end with '#### <number>' ({e})") from None
        out.append({**item, "gold": gold})
    return out


def mc_prompt(item: dict) -> str:
    lines = [str(item["question"]).strip(), ""]
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"])]
    return "\n".join(lines + ["", MC_SUFFIX])


def gsm_prompt(item: dict) -> str:
    return f"{str(item['question']).strip()}\n\n{GSM_SUFFIX}"


def parse_mc(text: str, n_choices: int) -> int | None:
    """The first standalone choice letter (A.., within n_choices) in the answer, as an index; None if none."""
    m = re.search(r"\b([%s])\b" % LETTERS[:n_choices], text)
    return LETTERS.index(m.group(1)) if m else None


def parse_gsm(text: str) -> float | None:
    """The first number after the last '####', else the last number of the answer; None if none."""
    if "####" in text:
        value = _number(text.rsplit("####", 1)[1], first=True)
        if value is not None:
            return value
    return _number(text)


TASKS = {
    "mc": (mc_prompt, lambda text, item: parse_mc(text, len(item["choices"])), lambda item: item["answer"]),
    "gsm": (gsm_prompt, lambda text, item: parse_gsm(text), lambda item: item["gold"]),
}


PROTOCOLS = ("prosv", "reference")
MAX_NEW_TOKENS = {"prosv": {"mc": 16, "gsm": 256}, "reference": {"mc": 128, "gsm": 512}}


def shot_turns(task: str, shots: Sequence[dict]) -> list[dict]:
    """The few-shot examples as chat turns: the shot's prompt (user), its gold answer (assistant)."""
    make_prompt = TASKS[task][0]
    turns = []
    for shot in shots:
        answer = LETTERS[shot["answer"]] if task == "mc" else str(shot["answer"])
        turns += [{"role": "user", "content": make_prompt(shot)}, {"role": "assistant", "content": answer}]
    return turns


def reference_correct(task: str, text: str, item: dict) -> tuple[object, bool]:
    """(prediction, correct) by the reference's matching: MC, the gold letter appears in the answer; GSM8K, a number
    found scanning from the end of the answer equals the gold number within 1e-3 (the prediction: that number, else
    the last one)."""
    if task == "mc":
        letter = LETTERS[item["answer"]]
        found = re.search(r"\b%s\b" % letter, text) is not None
        return (item["answer"] if found else None), found
    numbers = [float(n.replace(",", "").replace("$", "")) for n in _NUMBER.findall(text)]
    for value in reversed(numbers):
        if abs(value - item["gold"]) < 1e-3:
            return value, True
    return (numbers[-1] if numbers else None), False


def evaluate(task: str, items: Sequence[dict], generate: Callable[[list], Sequence[str]], protocol: str = "prosv",
             shots: Sequence[dict] = ()) -> tuple[float, list[dict]]:
    """(accuracy, per-item predictions) of `generate(prompts) -> answers` on one task ("mc" or "gsm"); with the
    reference protocol the prompts are chat-message lists (few-shot turns, then the item)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"utility protocol must be one of {PROTOCOLS}, got {protocol!r}")
    make_prompt, parse, gold = TASKS[task]
    if protocol == "reference":
        turns = shot_turns(task, shots)
        prompts = [turns + [{"role": "user", "content": make_prompt(item)}] for item in items]
    else:
        prompts = [make_prompt(item) for item in items]
    answers = list(generate(prompts))
    if len(answers) != len(prompts):
        raise ValueError(f"generate returned {len(answers)} answers for {len(prompts)} prompts")
    preds = []
    for n, (item, text) in enumerate(zip(items, answers)):
        if protocol == "reference":
            pred, correct = reference_correct(task, text, item)
        else:
            pred = parse(text, item)
            correct = pred is not None and (abs(pred - gold(item)) < 1e-6 if task == "gsm" else pred == gold(item))
        preds.append({"item": n, "answer": text, "prediction": pred, "gold": gold(item), "correct": bool(correct)})
    return sum(p["correct"] for p in preds) / len(preds), preds


@dataclasses.dataclass
class UtilitySettings:
    model: str
    out: str
    mc: str | None = None
    gsm: str | None = None
    runs: str | None = None
    first_k: int = 10
    factor_scales: list[float] | None = None
    prompting_file: str | None = None
    split: str | None = None
    method: str | None = None
    setting: str | None = None
    unsteered: bool = True
    limit: int | None = None
    mc_max_new_tokens: int | None = None  # None: the protocol's (MAX_NEW_TOKENS)
    gsm_max_new_tokens: int | None = None
    batch_size: int = 16
    dtype: str = "float32"
    protocol: str = "prosv"  # or "reference" (method.md section 4)
    mc_shots: str | None = None  # few-shot examples (reference protocol), same schema as the items
    gsm_shots: str | None = None
    include_diverged: bool = False  # evaluate runs that diverged in training too


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def run_utility(s: UtilitySettings, log: Callable[[str], None] = print) -> list[dict]:
    """Evaluates every (method, task) and writes utility.json / utility.csv; returns the rows."""
    from prosv_jax.models.sources import resolve_model_dir

    from .concept_prompts import load_prompting_file, prompting_prompt
    from .generation import Generator, trained_factor
    from .runs import check_concepts, concept_table, find_runs, setting_of_runs, split_of_runs

    if not s.mc and not s.gsm:
        raise ValueError("give --mc FILE and/or --gsm FILE (schemas in prosv_jax/evaluation/utility.py)")
    if s.first_k < 1:
        raise ValueError(f"--first-k must be >= 1, got {s.first_k}")
    if s.protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {s.protocol!r}")
    if s.protocol != "reference" and (s.mc_shots or s.gsm_shots):
        raise ValueError("few-shot files (--mc-shots, --gsm-shots) belong to --protocol reference")
    max_new = {t: given or MAX_NEW_TOKENS[s.protocol][t] for t, given in (("mc", s.mc_max_new_tokens),
                                                                         ("gsm", s.gsm_max_new_tokens))}
    shots = {"mc": load_mc(s.mc_shots) if s.mc_shots else [], "gsm": load_gsm(s.gsm_shots) if s.gsm_shots else []}
    tasks = {}
    if s.mc:
        tasks["mc"] = load_mc(s.mc)
    if s.gsm:
        tasks["gsm"] = load_gsm(s.gsm)
    if s.limit:
        tasks = {t: items[:s.limit] for t, items in tasks.items()}
    model_dir = resolve_model_dir(s.model)
    runs = find_runs(s.runs, s.include_diverged, log) if s.runs else []
    chosen_ids = sorted({r.concept_id for r in runs})[:s.first_k]
    runs = [r for r in runs if r.concept_id in chosen_ids]
    setting = s.setting or (setting_of_runs(s.runs, model_dir) if s.runs else os.path.basename(model_dir))
    base_method = s.method or (os.path.basename(os.path.normpath(s.runs)) if s.runs else None)
    scales = s.factor_scales or [1.0]
    prompts = None
    if s.prompting_file:
        split = s.split or (split_of_runs(s.runs) if s.runs else None)
        if not split:
            raise ValueError("the prompting baseline needs the concepts: give --split DIR (or --runs)")
        concepts = concept_table(split)
        pids = chosen_ids or sorted(concepts)[:s.first_k]
        check_concepts(pids, concepts, split)
        prompts = load_prompting_file(s.prompting_file, pids)
    # methods: label -> list of (concept id or None, steering run or None, scale, prompt prefix or None)
    methods: dict[str, tuple[float | None, list]] = {}
    if s.unsteered:
        methods["unsteered"] = (None, [(None, None, None)])
    for sc in scales if runs else []:
        label = base_method if sc == 1 else f"{base_method} x{sc:g}"
        methods[label] = (float(sc), [(r.concept_id, r, None) for r in runs])
    if prompts is not None:
        methods["prompting"] = (None, [(cid, None, prompts[cid]) for cid in sorted(prompts)])
    stored = {"model": model_dir, "dtype": s.dtype, "limit": s.limit, "mc_sha256": file_sha256(s.mc),
              "gsm_sha256": file_sha256(s.gsm), "mc_max_new_tokens": max_new["mc"],
              "gsm_max_new_tokens": max_new["gsm"], "runs": os.path.abspath(s.runs) if s.runs else None,
              "prompting_sha256": file_sha256(s.prompting_file), "protocol": s.protocol,
              "mc_shots_sha256": file_sha256(s.mc_shots), "gsm_shots_sha256": file_sha256(s.gsm_shots)}
    check_same_settings(s.out, SETTINGS_FILE, stored, "utility predictions")
    os.makedirs(s.out, exist_ok=True)
    write_json(os.path.join(s.out, SETTINGS_FILE), stored)
    gen = None
    rows = []
    for label, (scale, members) in methods.items():
        for task, items in tasks.items():
            per_concept = {}
            for cid, run, prefix in members:
                name = "unsteered" if cid is None else (f"c{cid}" if run is None or len(
                    [m for m in members if m[0] == cid]) == 1 else f"c{cid}-{run.variant}")
                path = os.path.join(s.out, "items", _slug(label), task, f"{name}.jsonl")
                if os.path.isfile(path):
                    preds = read_jsonl(path)
                else:
                    if gen is None:
                        gen = Generator(model_dir, s.dtype, s.batch_size)
                    kw, alpha = {}, None
                    if run is not None:
                        steering, params = gen.load_steering(run.path)
                        alpha = trained_factor(steering, params)
                        if alpha is None and scale != 1:
                            raise ValueError(f"{run.path}: factor scales need a steering vector")
                        kw = dict(steering=steering, params=params)

                    def generate(ps, kw=kw, alpha=alpha, scale=scale, prefix=prefix, max_new=max_new[task]):
                        if prefix is not None:  # the steering prompt goes before the item's question
                            ps = [prompting_prompt(prefix, p) if isinstance(p, str) else
                                  p[:-1] + [{**p[-1], "content": prompting_prompt(prefix, p[-1]["content"])}]
                                  for p in ps]
                        factors = None if alpha is None else [alpha * scale] * len(ps)
                        return [a.text for a in gen(ps, max_new_tokens=max_new, chat=True, temperature=0.0,
                                                    factors=factors, **kw)]

                    _, preds = evaluate(task, items, generate, s.protocol, shots[task])
                    for p in preds:
                        p.update(method=label, setting=setting, task=task, concept_id=cid,
                                 run=run.name if run else None, factor_scale=scale)
                    write_jsonl(path, preds)
                acc = sum(p["correct"] for p in preds) / len(preds)
                per_concept[name] = acc
            accuracy = sum(per_concept.values()) / len(per_concept)
            rows.append({"method": label, "setting": setting, "task": task, "accuracy": accuracy,
                         "per_concept": per_concept, "n_items": len(items), "factor_scale": scale,
                         "file": os.path.abspath(s.mc if task == "mc" else s.gsm)})
            log(f"{label} / {task}: accuracy {accuracy:.3f} ({len(per_concept)} steering(s), {len(items)} items)")
    write_json(os.path.join(s.out, UTILITY_FILE), {"rows": rows, "model": model_dir, "runs": s.runs,
                                                   "first_k": s.first_k, "concepts": chosen_ids})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "setting", "task", "accuracy", "n_steerings", "n_items", "factor_scale"])
    for r in rows:
        w.writerow([r["method"], r["setting"], r["task"], f"{r['accuracy']:.6g}", len(r["per_concept"]),
                    r["n_items"], "" if r["factor_scale"] is None else r["factor_scale"]])
    write_atomic(os.path.join(s.out, "utility.csv"), buf.getvalue())
    return rows


__all__ = ["load_mc", "load_gsm", "mc_prompt", "gsm_prompt", "parse_mc", "parse_gsm", "gsm_gold", "evaluate",
           "UtilitySettings", "run_utility", "UTILITY_FILE"]
