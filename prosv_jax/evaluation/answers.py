"""Stage `axbench generate`: answers of a steered (or prompted) model to each concept's 10 AlpacaEval instructions.

Output folder:

- `generate.json`: the settings of the stage (a rerun with other settings into the same folder is refused);
- `c<concept id>.jsonl`: one record per answer, written atomically once the concept is done (a rerun skips it).

Record fields (every setting needed to reproduce the answer):

    method, setting          labels of the table's row and column (e.g. "PrOSV Lang", "Gemma-2-2B L10")
    mode                     "steering" (the trained factor) | "sweep" (fixed factors, or the trained factor times
                             each value of a factor grid) | "scaled" (trained x scale)
                             | "prompting" (no steering; a steering prompt before the instruction)
    attack                   null, or "suppression" (the instruction was rewritten to avoid the concept)
    concept_id, concept      the concept and its description
    run, steering            the trained run's name and folder (null for prompting)
    factor, factor_scale     the steering vector's factor alpha used (null for prompting or LoReFT), its scale
                             (relative to the trained factor: --factor-scales, --factor-grid)
    instruction_pos          0..9: position in the concept's sample (factor selection: choose on 0-4, report on 5-9)
    grid_half                null, or "select" (--select-half: a sweep on instructions 0-4 only) | "report"
                             (--report-half: instructions 5-9 at the factor the selection half's ratings chose)
    instruction_index        index in AlpacaEval's instructions.json
    instruction              the original instruction (what the judge sees)
    prompt                   the user message given to the model (chat-templated when chat is true)
    answer, answer_tokens, stopped   the answer text (at most max_new_tokens tokens), its length, whether it ended
                             with a stop token
    model, dtype, chat, seed, sampling, max_new_tokens, batch_size, batch_index, batch_row
                             the batch: rows of a concept go in order (runs, then factors, then instructions) in
                             batches of batch_size; batch b of concept c samples with
                             jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), c), b) (the report half:
                             with the concept key folded with REPORT_HALF_STREAM first, a stream of its own)

A factor sweep in protocol order costs about half a full grid: `--select-half` answers every factor on instructions
0-4, the judge rates them, and `--report-half RATINGS` answers instructions 5-9 at the factor each steering's ratings
choose (the same choice `axbench score` makes); `axbench score` scores the two rating folders together.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Callable, Sequence

from prosv_jax.data.bundled import BUNDLED_SPLIT

from .concept_prompts import load_prompting_file, prompting_prompt
from .instructions import load_alpaca_instructions, sample_instructions
from prosv_jax.files import write_json
from .records import check_same_settings, read_json, write_jsonl
from .runs import check_concepts, concept_table, find_runs, setting_of_runs, split_of_runs
from .scores import DEFAULT_REPORT_ON, DEFAULT_SELECT_ON

SETTINGS_FILE = "generate.json"
REPORT_HALF_STREAM = 2**31 - 1  # folded into a concept's sampling key in the report half


# The default grid of `--factor-grid`: 14 multiples of a steering's own factor (for DiffMean, of |d|, the norm of the
# mean difference), so the sweep's units follow the steering's natural edit size instead of an absolute alpha whose
# meaning depends on |v| (review M7). The values are this project's choice, denser around 1.
DEFAULT_FACTOR_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0)


@dataclasses.dataclass
class GenerateSettings:
    model: str
    out: str
    instructions: str
    runs: str | None = None  # a train output folder (steering methods)
    split: str | None = None  # AxBench split folder (default: the one the runs were trained on)
    concepts: list[int] | None = None  # default: the concepts of the runs (prompting: of the split)
    method: str | None = None
    setting: str | None = None
    factors: list[float] | None = None  # a fixed-factor sweep (absolute factors)
    factor_grid: list[float] | None = None  # a sweep of the trained factor times each value (factor selection)
    factor_scales: list[float] | None = None  # the trained factor times each scale
    prompting_file: str | None = None
    attack: str | None = None  # a label of the instruction rewrite ("suppression"), set by the robustness stage
    attack_source: str | None = None
    seed: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 128
    n_instructions: int = 10
    batch_size: int = 16
    dtype: str = "float32"
    chat: bool = True
    include_diverged: bool = False  # evaluate runs that diverged in training too
    select_half: bool = False  # a factor sweep on the selection half (instructions 0-4) only
    report_half: str | None = None  # ratings of a --select-half run: instructions 5-9 at each steering's chosen factor


@dataclasses.dataclass
class _Row:
    run: object  # TrainedRun or None
    method: str
    mode: str
    factor: float | None
    factor_scale: float | None
    pos: int
    index: int
    instruction: str
    prompt: str


def concept_file(out: str, concept_id: int) -> str:
    return os.path.join(out, f"c{int(concept_id)}.jsonl")


def concept_files(folder: str) -> list[int]:
    """Concept ids with a c<id>.jsonl in `folder`, ascending."""
    ids = [re.match(r"^c(\d+)\.jsonl$", name) for name in os.listdir(folder)] if os.path.isdir(folder) else []
    return sorted(int(m.group(1)) for m in ids if m)


def _check(s: GenerateSettings) -> None:
    if s.prompting_file and s.runs:
        raise ValueError("--prompting-file evaluates the prompting baseline (no steering); give it without --runs "
                         "(use --split/--concepts to choose the concepts)")
    if not s.prompting_file and not s.runs:
        raise ValueError("give --runs TRAIN_OUT_DIR (steering) or --prompting-file FILE (prompting baseline)")
    if sum(bool(x) for x in (s.factors, s.factor_scales, s.factor_grid)) > 1:
        raise ValueError("--factor (a sweep of fixed factors), --factor-grid (a sweep relative to the trained factor) "
                         "and --factor-scales (the trained factor scaled) exclude each other")
    if s.prompting_file and (s.factors or s.factor_scales or s.factor_grid):
        raise ValueError("factors apply to steerings, not to the prompting baseline")
    if s.temperature < 0 or s.max_new_tokens < 1 or s.n_instructions < 1:
        raise ValueError("temperature must be >= 0, max_new_tokens and n_instructions >= 1")
    if s.select_half and s.report_half:
        raise ValueError("--select-half and --report-half are the two steps of one sweep: give one of them")
    if s.select_half and not (s.factors or s.factor_grid):
        raise ValueError("--select-half answers the selection half of a factor sweep: give --factor-grid or --factor")
    if s.report_half and (s.factors or s.factor_grid or s.factor_scales or s.prompting_file):
        raise ValueError("--report-half answers at the factor its ratings chose: give no --factor, --factor-grid, "
                         "--factor-scales or --prompting-file")
    if (s.select_half or s.report_half) and s.n_instructions < max(DEFAULT_REPORT_ON) + 1:
        raise ValueError(f"the halves of a factor sweep are instructions {list(DEFAULT_SELECT_ON)} and "
                         f"{list(DEFAULT_REPORT_ON)}: --n-instructions must be at least {max(DEFAULT_REPORT_ON) + 1}")


def _positions(s: GenerateSettings) -> range:
    """The instruction positions answered: the selection half, the report half or all of them."""
    return DEFAULT_SELECT_ON if s.select_half else DEFAULT_REPORT_ON if s.report_half else range(s.n_instructions)


def selected_factors(ratings: str) -> dict[str, dict]:
    """{run name: {"method", "factor", "factor_scale"}}: the factor AxBench's selection chooses for each steering of
    a rated factor sweep, from its selection half (instructions 0-4) only, as `axbench score` chooses it."""
    from collections import defaultdict

    from .report import load_ratings
    from .scores import choose_factor

    by_run: dict = defaultdict(lambda: defaultdict(dict))
    for r in load_ratings([ratings]):
        if r.get("mode") == "sweep" and not r.get("attack") and r.get("run"):
            by_run[r["run"]][float(r["factor"])][int(r["instruction_pos"])] = r
    if not by_run:
        raise ValueError(f"{ratings}: no rated factor sweep of a trained steering; give the ratings folder of an "
                         "`axbench generate --select-half` run")
    out = {}
    for run, by_factor in by_run.items():
        table = {}
        for factor, slots in by_factor.items():
            missing = sorted(set(DEFAULT_SELECT_ON) - set(slots))
            if missing:
                raise ValueError(f"{ratings}: run {run}, factor {factor:g} lacks the rated answers to instruction(s) "
                                 f"{missing} of the selection half; rate the whole --select-half folder")
            table[factor] = [slots[k]["ratings"] for k in DEFAULT_SELECT_ON]
        factor, _ = choose_factor(table, DEFAULT_SELECT_ON, f"run {run}")
        first = by_factor[factor][DEFAULT_SELECT_ON[0]]
        out[run] = {"method": first["method"], "factor": factor, "factor_scale": first.get("factor_scale")}
    return out


def _labels(s: GenerateSettings, model_dir: str) -> tuple[str, str]:
    if s.prompting_file:
        method = s.method or "prompting"
    else:
        method = s.method or os.path.basename(os.path.normpath(s.runs)) + (
            " (factor selected)" if s.factors or s.factor_grid or s.report_half else "")
    if s.setting:
        setting = s.setting
    elif s.runs:
        setting = setting_of_runs(s.runs, model_dir)
    else:
        setting = os.path.basename(os.path.normpath(model_dir))
    return method, setting


def _stored_settings(s: GenerateSettings, model_dir: str, split: str, method: str, setting: str) -> dict:
    d = dataclasses.asdict(s)
    d.update(model=model_dir, split=split, method=method, setting=setting,
             runs=os.path.abspath(s.runs) if s.runs else None, out=os.path.abspath(s.out),
             instructions=os.path.abspath(s.instructions),
             prompting_file=os.path.abspath(s.prompting_file) if s.prompting_file else None,
             report_half=os.path.abspath(s.report_half) if s.report_half else None,
             sampling={"temperature": s.temperature, "top_p": 1.0, "top_k": 0})
    return d


def _check_resume(out: str, stored: dict) -> None:
    # A generate.json written before a setting existed lacks it: it ran with that setting's default.
    defaults = {f.name: f.default for f in dataclasses.fields(GenerateSettings) if f.default is not dataclasses.MISSING}
    check_same_settings(out, SETTINGS_FILE, stored, "generations", free=("concepts", "out"), defaults=defaults)


def _rows_for(concept_id: int, concept: str, sample, runs, s: GenerateSettings, method: str, prompts: dict | None,
              attack_texts: dict | None, trained: dict, chosen: dict | None) -> list[_Row]:
    def instruction_text(idx: int, text: str) -> str:
        return attack_texts[(concept_id, idx)] if attack_texts is not None else text

    sample = [(pos, idx, text) for pos, (idx, text) in enumerate(sample) if pos in _positions(s)]
    rows = []
    if prompts is not None:
        for pos, idx, text in sample:
            rows.append(_Row(None, method, "prompting", None, None, pos, idx, text,
                             prompting_prompt(prompts[concept_id], instruction_text(idx, text))))
        return rows
    for run in runs:
        label = method if len(runs) == 1 else f"{method} [{run.variant}]"
        alpha = trained[run.name]
        if chosen is not None:
            pick = chosen.get(run.name)
            if pick is None:
                raise ValueError(f"{s.report_half}: no rated selection half of run {run.name} (concept {concept_id}); "
                                 "answer and rate its --select-half first")
            if pick["method"] != label:
                raise ValueError(f"{s.report_half}: the selection half of run {run.name} is labelled "
                                 f"{pick['method']!r}, this run {label!r}: give the same --method to both halves")
            settings = [(label, "sweep", pick["factor"], pick["factor_scale"])]
        elif s.factors:
            if alpha is None:
                raise ValueError(f"{run.path}: a factor sweep needs a steering vector (this steering has no factor)")
            settings = [(label, "sweep", float(f), None) for f in s.factors]
        elif s.factor_grid:
            if alpha is None:
                raise ValueError(f"{run.path}: --factor-grid needs a steering vector (this steering has no factor)")
            settings = [(label, "sweep", alpha * r, float(r)) for r in s.factor_grid]
        elif s.factor_scales:
            if alpha is None:
                raise ValueError(f"{run.path}: --factor-scales needs a steering vector (this steering has no factor)")
            settings = [(label if sc == 1 else f"{label} x{sc:g}", "scaled", alpha * sc, float(sc))
                        for sc in s.factor_scales]
        else:
            settings = [(label, "steering", alpha, None)]
        for lab, mode, factor, scale in settings:
            for pos, idx, text in sample:
                rows.append(_Row(run, lab, mode, factor, scale, pos, idx, text, instruction_text(idx, text)))
    return rows


def run_generate(s: GenerateSettings, attack: Callable[[dict], dict] | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Generates every concept not yet in `s.out`; returns {"written": [...], "skipped": [...], "out": ...}.

    `attack({concept id: (concept, [(instruction index, text), ...])}) -> {(concept id, index): rewritten}` rewrites
    the instructions of the concepts about to be generated (the robustness stage).
    """
    import jax

    from prosv_jax.models.sources import resolve_model_dir

    _check(s)
    model_dir = resolve_model_dir(s.model)
    runs = find_runs(s.runs, s.include_diverged, log) if s.runs else []
    split = s.split or (split_of_runs(s.runs) if s.runs else None)
    if not split:
        raise ValueError("no AxBench split to read the concepts from: give --split DIR (a prod_<model>_<layer>_v1 "
                         "folder or its generate/ folder)")
    split = split if split == BUNDLED_SPLIT else os.path.abspath(split)
    concepts = concept_table(split)
    if s.concepts:
        ids = sorted({int(c) for c in s.concepts})
    elif runs:
        ids = sorted({r.concept_id for r in runs})
    else:
        ids = sorted(concepts)
    check_concepts(ids, concepts, split)
    by_concept = {cid: [r for r in runs if r.concept_id == cid] for cid in ids}
    if runs:
        untrained = [c for c, rs in by_concept.items() if not rs]
        if untrained:
            raise ValueError(f"{s.runs}: no trained steering for concept id(s) {untrained} (trained: "
                             f"{sorted({r.concept_id for r in runs})})")
    chosen = selected_factors(s.report_half) if s.report_half else None
    if chosen and not s.method:
        s = dataclasses.replace(s, method=_common_label(chosen))
    method, setting = _labels(s, model_dir)
    stored = _stored_settings(s, model_dir, split, method, setting)
    os.makedirs(s.out, exist_ok=True)
    _check_resume(s.out, stored)
    instructions = load_alpaca_instructions(s.instructions)
    prompts = load_prompting_file(s.prompting_file, ids) if s.prompting_file else None
    samples = {cid: sample_instructions(instructions, cid, s.n_instructions) for cid in ids}
    todo = [cid for cid in ids if not os.path.isfile(concept_file(s.out, cid))]
    skipped = [cid for cid in ids if cid not in todo]
    stored["concepts"] = ids
    write_json(os.path.join(s.out, SETTINGS_FILE), stored)
    if skipped:
        log(f"already generated: concept(s) {skipped}")
    if not todo:
        return {"written": [], "skipped": skipped, "out": s.out}
    attack_texts = attack({cid: (concepts[cid], samples[cid]) for cid in todo}) if attack else None

    from .generation import Generator, trained_factor

    gen = Generator(model_dir, s.dtype, s.batch_size)
    half = "select" if s.select_half else "report" if s.report_half else None
    base = {"setting": setting, "attack": s.attack, "model": model_dir, "dtype": s.dtype, "chat": s.chat,
            "seed": s.seed, "sampling": stored["sampling"], "max_new_tokens": s.max_new_tokens,
            "batch_size": s.batch_size}
    for cid in todo:
        start = time.time()
        loaded = {r.name: gen.load_steering(r.path) for r in by_concept[cid]}
        trained = {name: trained_factor(*sp) for name, sp in loaded.items()}
        rows = _rows_for(cid, concepts[cid], samples[cid], by_concept[cid], s, method, prompts, attack_texts, trained,
                         chosen)
        records, b = [], 0
        concept_key = jax.random.fold_in(jax.random.key(s.seed), cid)
        if s.report_half:
            concept_key = jax.random.fold_in(concept_key, REPORT_HALF_STREAM)
        groups = [[r for r in rows if r.run is run] for run in (by_concept[cid] or [None])]
        for group in groups:
            for batch_rows in (group[i:i + s.batch_size] for i in range(0, len(group), s.batch_size)):
                run = batch_rows[0].run
                steering, params = loaded[run.name] if run else (None, None)
                factors = [r.factor for r in batch_rows] if run and trained[run.name] is not None else None
                answers = gen.generate([r.prompt for r in batch_rows], key=jax.random.fold_in(concept_key, b),
                                       max_new_tokens=s.max_new_tokens, temperature=s.temperature, chat=s.chat,
                                       steering=steering, params=params, factors=factors)
                for row_i, (r, a) in enumerate(zip(batch_rows, answers)):
                    records.append({**base, "method": r.method, "mode": r.mode, "concept_id": cid,
                                    "concept": concepts[cid], "run": run.name if run else None,
                                    "steering": run.path if run else None, "factor": r.factor,
                                    "factor_scale": r.factor_scale, "instruction_pos": r.pos,
                                    "instruction_index": r.index, "instruction": r.instruction, "prompt": r.prompt,
                                    "grid_half": half,
                                    "answer": a.text, "answer_tokens": a.n_tokens, "stopped": a.stopped,
                                    "batch_index": b, "batch_row": row_i})
                b += 1
        write_jsonl(concept_file(s.out, cid), records)
        log(f"concept {cid}: {len(records)} answers in {time.time() - start:.1f} s -> {concept_file(s.out, cid)}")
    return {"written": todo, "skipped": skipped, "out": s.out}


def _common_label(chosen: dict) -> str:
    """The method label of a selection half (its runs' labels without a ' [variant]' suffix)."""
    labels = {re.sub(r" \[[^]]*\]$", "", pick["method"]) for pick in chosen.values()}
    if len(labels) != 1:
        raise ValueError(f"the selection half's ratings hold several methods {sorted(labels)}; give --method")
    return labels.pop()


def load_generations(folder: str) -> tuple[dict, dict[int, list[dict]]]:
    """(settings, {concept id: records}) of a generate output folder."""
    from .records import read_jsonl

    settings = read_json(os.path.join(folder, SETTINGS_FILE))
    out = {}
    for cid in concept_files(folder):
        out[cid] = read_jsonl(concept_file(folder, cid), GENERATION_FIELDS, "generation record")
    if not out:
        raise ValueError(f"{folder}: no generated concept (no c<id>.jsonl); run `prosv-jax axbench generate` first")
    return settings, out


GENERATION_FIELDS = ("method", "setting", "concept_id", "concept", "instruction_pos", "instruction", "answer")


def factor_list(values: Sequence[str] | None) -> list[float] | None:
    """'--factor 1 2,3' style values as floats (None when not given)."""
    if not values:
        return None
    out = []
    for v in values:
        out += [float(x) for x in str(v).replace(",", " ").split()]
    return out
