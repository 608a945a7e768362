"""Stage `axbench judge`: every generated answer rated 0/1/2 on the three rubric questions.

Output folder (default `<generations>/ratings`):

- `judge.json`: the judge's settings (never a key: model, sampling settings, rubric source and hash, rating parse) and
  the generations folder. A folder holds one judge's ratings: a rerun with another judge (or on other generations)
  is refused;
- `c<concept id>.jsonl`: the generation records plus `ratings` ({"concept": 0-2, "instruction": 0-2,
  "fluency": 0-2}), `malformed` (factors whose reply had no parseable rating; they count as 0) and `judge_replies`;
  written atomically once all of a concept's answers are rated;
- `judge_report.json`: status ("complete" or "partial"), concepts written, the failure if any, and the counters
  (requests sent, retries, cache hits, malformed, failures, prompt/completion tokens).

Every rating is cached on disk as soon as it arrives (default cache `<out>/cache`), so a rerun resumes where a failure
stopped and a complete rerun sends no request. A concept whose rating file already holds exactly its generated
answers is kept as it is (so a folder grown by concepts rates only the new ones, with any judge). Concepts are rated
in order; after a concept fails (the endpoint gives up), later concepts are not attempted.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from .answers import load_generations
from .judges import JudgeError, rate_answers
from prosv_jax.files import write_json
from .records import write_jsonl
from .rubric import FACTORS

JUDGE_FILE = "judge.json"
REPORT_FILE = "judge_report.json"


class PartialRatings(RuntimeError):
    """The judge stopped before every concept was rated; `report` says what was kept."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def default_out(generations: str) -> str:
    return os.path.join(generations, "ratings")


# Judge settings that do not change a rating: how and where requests are sent (the endpoint too, as in the cache
# key: the same model behind another URL is the same judge), where replies are cached.
OPERATIONAL_KEYS = frozenset({"base_url", "timeout", "max_concurrency", "max_retries", "backoff_base", "backoff_max",
                              "cache_dir", "batch_size", "api_key_set"})


def judge_identity(config: dict) -> dict:
    """The part of a judge's config that decides its ratings (kind, model, sampling, rubric, parse)."""
    return {k: v for k, v in config.items() if k not in OPERATIONAL_KEYS}


def _check_same_judge(out: str, record: dict) -> None:
    """Refuses to add ratings to a folder that another judge, or other generations, already rated (M12)."""
    path = os.path.join(out, JUDGE_FILE)
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        old_judge, old_generations = judge_identity(old["judge"]), old["generations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is unreadable ({e}): remove the ratings folder {out} or choose another --out") from None
    new_judge = judge_identity(record["judge"])
    changed = sorted(k for k in set(old_judge) | set(new_judge) if old_judge.get(k) != new_judge.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old_judge.get(k)!r} -> {new_judge.get(k)!r}" for k in changed[:4])
        raise ValueError(f"ratings folder {out} was rated by another judge ({diffs}); one folder holds one judge's "
                         "ratings: give a new --out, or rerun with the same judge settings to resume")
    if old_generations != record["generations"]:
        raise ValueError(f"ratings folder {out} holds ratings of {old_generations}, not {record['generations']}: "
                         "give a new --out")


def _already_rated(path: str, records: list[dict]) -> bool:
    """Whether the rating file at `path` rates exactly these generation records (same answers, in order)."""
    from .records import read_jsonl

    if not os.path.isfile(path):
        return False
    try:
        rated = read_jsonl(path)
    except ValueError:
        return False  # unreadable: rate again
    answer = lambda r: (r.get("instruction_pos"), r.get("factor"), r.get("instruction"), r.get("answer"))  # noqa: E731
    return [answer(r) for r in rated] == [answer(r) for r in records]


def run_judge(generations: str, judge, out: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Rates every answer of a generate folder into `out`; returns the report (raises PartialRatings on failure).
    An existing `out` must have been rated by the same judge on the same generations (it then resumes)."""
    settings, by_concept = load_generations(generations)
    out = out or default_out(generations)
    record = {"judge": judge.config(), "generations": os.path.abspath(generations),
              "method": settings.get("method"), "setting": settings.get("setting")}
    _check_same_judge(out, record)
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, JUDGE_FILE), record)
    report = {"status": "complete", "generations": os.path.abspath(generations), "out": os.path.abspath(out),
              "written": [], "kept": [], "failed": None, "not_attempted": [], "answers_rated": 0}
    start = time.time()
    ids = sorted(by_concept)
    for n, cid in enumerate(ids):
        records = by_concept[cid]
        if _already_rated(os.path.join(out, f"c{cid}.jsonl"), records):
            report["kept"].append(cid)
            continue
        items = [(r["concept"], r["instruction"], r["answer"]) for r in records]
        try:
            rated = rate_answers(judge, items)
        except JudgeError as e:
            report.update(status="partial", failed={"concept_id": cid, "ratings_obtained": e.n_succeeded,
                                                    "ratings_needed": e.n_total, "failed": e.n_failed,
                                                    "abandoned": e.n_skipped, "error": str(e)},
                          not_attempted=ids[n + 1:])
            break
        rows = []
        for rec, ratings in zip(records, rated):
            rows.append({**rec, "ratings": {f: ratings[f].value for f in FACTORS},
                         "malformed": [f for f in FACTORS if not ratings[f].ok],
                         "judge_replies": {f: ratings[f].reply for f in FACTORS}})
        write_jsonl(os.path.join(out, f"c{cid}.jsonl"), rows)
        report["written"].append(cid)
        report["answers_rated"] += len(rows)
        log(f"concept {cid}: {len(rows)} answers rated")
    report["stats"] = judge.stats.as_dict()
    report["seconds"] = round(time.time() - start, 3)
    write_json(os.path.join(out, REPORT_FILE), report)
    if report["status"] == "partial":
        f = report["failed"]
        cache = judge.cache.path if getattr(judge, "cache", None) is not None else None
        raise PartialRatings(
            f"the judge failed on concept {f['concept_id']}: {f['ratings_obtained']} of its {f['ratings_needed']} "
            f"ratings obtained{f' (kept in the cache {cache})' if cache else ''}; rated and written: concept(s) "
            f"{report['written'] or 'none'} in {out}; not attempted: {report['not_attempted'] or 'none'}. "
            f"Rerun the same command to resume (cached ratings cost nothing). Error: {f['error']}", report)
    return report


def format_stats(stats: dict) -> str:
    return (f"requests sent {stats['requests_sent']}, retries {stats['retries']}, cache hits {stats['cache_hits']}, "
            f"ratings {stats['rated']}, malformed {stats['malformed']} (counted as 0), failures {stats['failures']}, "
            f"tokens {stats['prompt_tokens']} prompt + {stats['completion_tokens']} completion")


def local_generate_fn(model_dir: str, dtype: str = "float32", batch_size: int = 16, max_new_tokens: int = 128):
    """(generate(prompts) -> replies, model dir): greedy, chat-templated answers of a prosv-jax model (local judge).
    The model is loaded at the first call, so a fully cached rerun never loads it."""
    from prosv_jax.models.sources import resolve_model_dir

    from .generation import Generator

    path = resolve_model_dir(model_dir)
    loaded = []

    def generate(prompts):
        if not loaded:
            loaded.append(Generator(path, dtype, batch_size))
        return [a.text for a in loaded[0](list(prompts), max_new_tokens=max_new_tokens, chat=True, temperature=0.0)]

    return generate, path
