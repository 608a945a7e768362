"""`prosv-jax axbench STAGE`: the AxBench steering evaluation, one resumable stage per command (method.md section 4).

    prosv-jax axbench train      --config FILE [--config.a.b=v ...] [--out TRAIN]       (= prosv-jax train)
    prosv-jax axbench generate   --model DIR --runs TRAIN [--instructions ALPACA] --out GEN [--factor X ...]
    prosv-jax axbench generate   --model DIR --prompting-file F --split SPLIT [--instructions ALPACA] --out GEN
    prosv-jax axbench diffmean   --model DIR --split SPLIT --layer L --out TRAIN [--concepts ...] [--positions all]
    prosv-jax axbench generate   --model DIR --runs TRAIN --out GEN --factor-grid    (factor selection, 14 factors)
    prosv-jax axbench generate   ... --factor-grid --select-half --out G1; judge G1; generate ... --report-half
                                 G1/ratings --out G2; judge G2         (the same selection, about half the answers)
    prosv-jax axbench detectors  --model EVAL --split SPLIT --out DET [--layer L] [--concepts ...]
    prosv-jax axbench negatives  --model DIR --split SPLIT --detectors DET --out NEG.jsonl [--concepts ...]
    prosv-jax axbench judge      --generations GEN [--judge openai|local] [--judge-model M] [--base-url U] [--cache C]
    prosv-jax axbench judge      --generations GEN --judge probe --detectors DET           (no judge LLM)
    prosv-jax axbench score      --ratings DIR [DIR ...] --out REPORT [--utility UTIL ...]
    prosv-jax axbench utility    --model DIR --runs TRAIN --mc F --gsm F --out UTIL [--first-k 10] [--factor-scales]
    prosv-jax axbench robustness --model DIR --runs TRAIN [--instructions ALPACA] --out GEN
                                 (--attack-file F | --attack-template | --attack-llm) [--factor-scales 1,0.8,0.5]
    prosv-jax axbench prompts    --split SPLIT --out F.jsonl [--concepts ...] (judge endpoint options | --template)
    prosv-jax axbench sacrifice  --model DIR (--runs TRAIN | --prompting-file F --split SPLIT) --out SAC
                                 [--factors-from REPORT --method M]

File formats are documented in prosv_jax/evaluation/{answers,rating,report,utility,concept_prompts}.py. A split may be
'bundled:concept10' (AxBench's concept10 split shipped with prosv-jax); the instructions default to the bundled
AlpacaEval instructions.
"""

from __future__ import annotations

import argparse
import os
import sys

from prosv_jax.models.sources import model_names_help


def _ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"concept ids must be integers like 0,1,2, got {text!r}") from None


def _scales(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        values = [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"factor scales must be numbers like 1,0.8,0.5, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise ValueError(f"factor scales must be > 0, got {values}")
    return values


def _grid(text: str | None) -> list[float] | None:
    from prosv_jax.evaluation.answers import DEFAULT_FACTOR_GRID

    if text is None:
        return None
    return list(DEFAULT_FACTOR_GRID) if text == "default" else _scales(text)


def _add_generation_args(p, with_factors: bool = True) -> None:
    p.add_argument("--model", required=True, help=model_names_help())
    p.add_argument("--runs", metavar="TRAIN_OUT", help="output folder of `prosv-jax train` (the steerings)")
    p.add_argument("--instructions", metavar="PATH",
                   help="AlpacaEval instructions.json (default: the bundled copy of the 805 instructions)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--split", metavar="DIR", help="AxBench split folder, or bundled:concept10 (default: the runs' "
                                                  "data.split_dir)")
    p.add_argument("--concepts", metavar="IDS", help="concept ids to evaluate, e.g. 0,1 (default: all trained)")
    p.add_argument("--method", help="row label in the summary table (default: the runs folder's name)")
    p.add_argument("--setting", help="column label (default: '<model name> L<layer>' from the train config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=128, help="answers are cut to this many tokens")
    p.add_argument("--n-instructions", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    if with_factors:
        p.add_argument("--factor", action="append", metavar="X",
                       help="a fixed factor alpha (repeatable or comma-separated): a factor sweep, scored with factor "
                            "selection (absolute: its effect depends on the steering's |v|)")
        p.add_argument("--factor-grid", nargs="?", const="default", metavar="R",
                       help="a factor sweep relative to each steering's own factor (alpha x R for each R, "
                            "comma-separated), scored with factor selection; without R, the 14 multiples of "
                            "DEFAULT_FACTOR_GRID (0.1 .. 4). For DiffMean, alpha = |d|")
        p.add_argument("--select-half", action="store_true",
                       help="a factor sweep in protocol order, step 1: every factor on the selection half "
                            "(instructions 0-4) only; rate it, then answer the report half with --report-half")
        p.add_argument("--report-half", metavar="RATINGS",
                       help="step 2: instructions 5-9 at the factor each steering's selection-half ratings (the "
                            "judge's folder of a --select-half run) choose; score both rating folders together")
        p.add_argument("--prompting-file", metavar="F",
                       help="prompting baseline: JSONL {concept_id, prompt} (no steering; give --split)")
    p.add_argument("--factor-scales", metavar="S", help="the trained factor times each scale, e.g. 1,0.8,0.5")
    p.add_argument("--include-diverged", action="store_true",
                   help="also evaluate runs that diverged in training (left out with a warning by default)")


def _add_judge_args(p) -> None:
    p.add_argument("--judge", choices=("openai", "local", "probe"), default="openai",
                   help="openai: an OpenAI-compatible endpoint; local: a local instruct model answering the rubric; "
                        "probe: no judge LLM, ratings from concept detectors and an evaluator model's likelihoods "
                        "(give --detectors; see prosv_jax/evaluation/probe_judge.py)")
    p.add_argument("--detectors", metavar="DIR", help="probe: an `axbench detectors` folder (its evaluator rates)")
    p.add_argument("--judge-model", help="openai: model name (default $PROSV_JUDGE_MODEL or gpt-4o-mini); "
                                         "local: a prosv-jax model folder")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (default $PROSV_JUDGE_BASE_URL or OpenAI's); "
                                      "the key is read from $PROSV_JUDGE_API_KEY or $OPENAI_API_KEY only")
    p.add_argument("--cache", metavar="DIR", help="judge cache (default: <out>/cache)")
    p.add_argument("--rubric", metavar="FILE", help="rubric templates JSON (e.g. the official AxBench ones)")
    p.add_argument("--judge-temperature", type=float, default=0.01,
                   help="openai: sampling temperature (default 0.01, the paper's code; AxBench's code uses 0.7)")
    p.add_argument("--judge-max-tokens", type=int, default=500,
                   help="openai: most completion tokens per reply (default 500, the paper's code)")
    p.add_argument("--rating-parse", choices=("paper", "axbench"), default="paper",
                   help="paper: the last 'Rating: [[N]]', 0 when none (the paper's code, default); axbench: "
                        "AxBench's lenient parse (text after the last 'Rating:', any float in [0, 2])")
    p.add_argument("--max-concurrency", type=int, default=8)
    p.add_argument("--max-retries", type=int, default=6)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--backoff-base", type=float, default=1.0, help="first retry wait (doubles; Retry-After wins)")
    p.add_argument("--judge-batch-size", type=int, default=16, help="local judge batch")
    p.add_argument("--judge-max-new-tokens", type=int, default=128, help="local judge reply length")


def _openai_kwargs(args, cache: str) -> dict:
    return dict(model=args.judge_model, base_url=args.base_url, cache_dir=cache,
                max_concurrency=args.max_concurrency, max_retries=args.max_retries, timeout=args.timeout,
                backoff_base=args.backoff_base, temperature=args.judge_temperature,
                max_tokens=args.judge_max_tokens)


def build_judge(args, cache: str):
    from prosv_jax.evaluation import LocalJudge, OpenAIJudge, load_rubric_templates
    from prosv_jax.evaluation.rating import local_generate_fn

    if args.judge == "probe":
        from prosv_jax.evaluation.probe_judge import ProbeJudge

        if not args.detectors:
            raise ValueError("--judge probe needs --detectors DIR (made by `prosv-jax axbench detectors`)")
        return ProbeJudge(args.detectors, batch_size=args.judge_batch_size)
    templates = load_rubric_templates(args.rubric) if args.rubric else None
    if args.judge == "openai":
        return OpenAIJudge(templates=templates, parse=args.rating_parse, **_openai_kwargs(args, cache))
    if not args.judge_model:
        raise ValueError("--judge local needs --judge-model DIR (a model folder, .gguf file, known model name, or 'builtin')")
    generate, model_dir = local_generate_fn(args.judge_model, batch_size=args.judge_batch_size,
                                            max_new_tokens=args.judge_max_new_tokens)
    return LocalJudge(generate, model_dir, cache_dir=cache, templates=templates, batch_size=args.judge_batch_size,
                      sampling={"max_new_tokens": args.judge_max_new_tokens, "temperature": 0.0},
                      parse=args.rating_parse)


def _settings(args, **extra):
    from prosv_jax.data.bundled import bundled_instructions_path
    from prosv_jax.evaluation.answers import GenerateSettings, factor_list

    return GenerateSettings(
        model=args.model, out=args.out, instructions=args.instructions or bundled_instructions_path(),
        runs=args.runs, split=args.split,
        concepts=_ids(args.concepts), method=args.method, setting=args.setting,
        factors=factor_list(getattr(args, "factor", None)), factor_scales=_scales(args.factor_scales),
        factor_grid=_grid(getattr(args, "factor_grid", None)),
        prompting_file=getattr(args, "prompting_file", None), select_half=getattr(args, "select_half", False),
        report_half=getattr(args, "report_half", None), seed=args.seed, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, n_instructions=args.n_instructions, batch_size=args.batch_size,
        dtype=args.dtype, chat=not args.no_chat, include_diverged=args.include_diverged, **extra)


# --- stages ---------------------------------------------------------------------------------------------------------

def run_generate(args) -> int:
    from prosv_jax.evaluation.answers import run_generate as generate

    result = generate(_settings(args))
    print(f"generations: {os.path.abspath(result['out'])} (written {result['written']}, skipped "
          f"{result['skipped']})")
    return 0


def run_diffmean(args) -> int:
    from prosv_jax.evaluation.diffmean import run_diffmean as diffmean

    folders = diffmean(args.model, args.split, args.layer, args.out, _ids(args.concepts), args.positions,
                       args.batch_size, args.dtype)
    print(f"diffmean steerings: {os.path.abspath(args.out)} ({len(folders)} concepts); next: prosv-jax axbench "
          f"generate --model {args.model} --runs {args.out} --factor-grid --out GEN")
    return 0


def run_detectors(args) -> int:
    from prosv_jax.evaluation.concept_detector import DETECTORS_CSV, run_detectors as detectors

    rows = detectors(args.model, args.split, args.out, args.layer, _ids(args.concepts), args.batch_size,
                     args.max_tokens, args.dtype)
    flagged = [r["concept_id"] for r in rows if r["flagged"]]
    print(f"concept detectors: {os.path.abspath(args.out)} ({len(rows)} concepts, table {DETECTORS_CSV}"
          f"{'; flagged (AUROC < 0.85): ' + ','.join(map(str, flagged)) if flagged else ''})")
    return 0


def run_negatives(args) -> int:
    from prosv_jax.evaluation.negatives import run_negatives as negatives

    negatives(args.model, args.split, args.detectors, args.out, _ids(args.concepts), args.max_new_tokens,
              args.threshold, args.retries, args.batch_size, args.dtype, args.max_examples)
    print(f"negatives: {os.path.abspath(args.out)}; train SimPO with --config.data.negatives={args.out}")
    return 0


def run_sacrifice(args) -> int:
    from prosv_jax.evaluation.sacrifice import TABLE_FILE, run_sacrifice as sacrifice

    rows = sacrifice(args.model, args.out, runs=args.runs, prompting_file=args.prompting_file, split=args.split,
                     concepts=_ids(args.concepts), factors_from=args.factors_from, method=args.method,
                     n_pairs=args.n_pairs, max_answer=args.max_answer, batch_size=args.batch_size, dtype=args.dtype,
                     chat=not args.no_chat)
    mean = sum(r["sacrifice"] for r in rows) / len(rows)
    print(f"sacrifice: {os.path.join(os.path.abspath(args.out), TABLE_FILE)} ({len(rows)} rows, mean {mean:+.4f} "
          "nats per token)")
    return 0


def run_judge(args) -> int:
    from prosv_jax.evaluation.rating import PartialRatings, default_out, format_stats
    from prosv_jax.evaluation.rating import run_judge as judge_stage

    out = args.out or default_out(args.generations)
    judge = build_judge(args, args.cache or os.path.join(out, "cache"))
    try:
        report = judge_stage(args.generations, judge, out)
    except PartialRatings as e:
        print(f"judge: {format_stats(e.report['stats'])}", file=sys.stderr)
        print(f"prosv-jax axbench judge: partial result: {e}", file=sys.stderr)
        return 3
    print(f"judge: {format_stats(report['stats'])}")
    kept = f"; kept as rated before: {report['kept']}" if report["kept"] else ""
    print(f"ratings: {report['out']} (concepts {report['written']}, {report['answers_rated']} answers{kept})")
    return 0


def run_score(args) -> int:
    from prosv_jax.evaluation.report import load_ratings, load_utility, score_groups, write_report

    groups = score_groups(load_ratings(args.ratings))
    paths = write_report(groups, args.out, load_utility(args.utility), args.allow_mixed_concepts)
    with open(paths["summary_md"]) as f:
        print(f.read().rstrip())
    print()
    for name, path in paths.items():
        print(f"{name + ':':13s} {path}")
    return 0


def run_utility(args) -> int:
    from prosv_jax.evaluation.utility import UtilitySettings
    from prosv_jax.evaluation.utility import run_utility as utility

    rows = utility(UtilitySettings(
        model=args.model, out=args.out, mc=args.mc, gsm=args.gsm, runs=args.runs, first_k=args.first_k,
        factor_scales=_scales(args.factor_scales), prompting_file=args.prompting_file, split=args.split,
        method=args.method, setting=args.setting, unsteered=not args.no_unsteered, limit=args.limit,
        mc_max_new_tokens=args.mc_max_new_tokens, gsm_max_new_tokens=args.gsm_max_new_tokens,
        batch_size=args.batch_size, dtype=args.dtype, protocol=args.protocol, mc_shots=args.mc_shots,
        gsm_shots=args.gsm_shots, include_diverged=args.include_diverged))
    print(f"utility: {os.path.abspath(os.path.join(args.out, 'utility.json'))} ({len(rows)} rows)")
    return 0


def run_robustness(args) -> int:
    from prosv_jax.evaluation.answers import run_generate as generate
    from prosv_jax.evaluation.robustness import make_attack

    kinds = [k for k, on in (("file", args.attack_file), ("template", args.attack_template),
                             ("llm", args.attack_llm)) if on]
    if len(kinds) != 1:
        raise ValueError("choose one source of rewritten instructions: --attack-file F, --attack-template or "
                         "--attack-llm")
    kind = kinds[0]
    judge_kwargs = _openai_kwargs(args, args.cache or os.path.join(args.out, "rewrite_cache")) \
        if kind == "llm" else None
    source = {"file": os.path.abspath(args.attack_file) if args.attack_file else None, "template": "template",
              "llm": "llm"}[kind]
    result = generate(_settings(args, attack="suppression", attack_source=source),
                      attack=make_attack(kind, args.attack_file, judge_kwargs))
    print(f"attacked generations: {os.path.abspath(result['out'])} (written {result['written']}, skipped "
          f"{result['skipped']}); next: prosv-jax axbench judge --generations {result['out']}")
    return 0


def run_prompts(args) -> int:
    from prosv_jax.evaluation.concept_prompts import (STEERING_PROMPT_PROMPT, llm_texts,
                                                      steering_prompt_from_template)
    from prosv_jax.evaluation.records import write_jsonl
    from prosv_jax.evaluation.runs import check_concepts, concept_table

    concepts = concept_table(args.split)
    ids = _ids(args.concepts) or sorted(concepts)
    check_concepts(ids, concepts, args.split)
    if args.template:
        write_jsonl(args.out, [{"concept_id": c, "prompt": steering_prompt_from_template(concepts[c])} for c in ids])
        print(f"steering prompts: {args.out} ({len(ids)} concepts, from the template; no judge LLM)")
        return 0
    texts, stats = llm_texts(STEERING_PROMPT_PROMPT, [(concepts[c], "") for c in ids],
                             **_openai_kwargs(args, args.cache or os.path.splitext(args.out)[0] + "_cache"))
    write_jsonl(args.out, [{"concept_id": c, "prompt": t} for c, t in zip(ids, texts)])
    print(f"steering prompts: {args.out} ({len(ids)} concepts; {stats['requests_sent']} requests, "
          f"{stats['cache_hits']} cached)")
    return 0


def add_parser(subparsers) -> None:
    from prosv_jax.commands import train

    parser = subparsers.add_parser(
        "axbench", help="AxBench steering evaluation: train, generate, judge, score, utility, robustness",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)

    train.add_parser(stages)  # `axbench train` is `prosv-jax train`: every concept of the config's split

    p = stages.add_parser("generate", help="steered (or prompted) answers to 10 AlpacaEval instructions per concept")
    _add_generation_args(p)
    p.set_defaults(run=run_generate)

    p = stages.add_parser("diffmean", help="a DiffMean steering per concept (the optimisation-free baseline)")
    p.add_argument("--model", required=True, help=model_names_help())
    p.add_argument("--split", required=True, metavar="DIR", help="AxBench split folder, or bundled:concept10")
    p.add_argument("--layer", required=True, type=int, help="the block L whose output is steered")
    p.add_argument("--out", required=True, metavar="DIR", help="a train-like folder (runs/c<id>-diffmean/)")
    p.add_argument("--concepts", metavar="IDS", help="concept ids, e.g. 0,1 (default: every concept of the split)")
    p.add_argument("--positions", default="all", help="where the steering applies (default all, as AxBench)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.set_defaults(run=run_diffmean)

    p = stages.add_parser("detectors", help="a judge-free concept detector per concept (a probe on an evaluator "
                                            "model), validated on the split's held-out latent_eval texts")
    p.add_argument("--model", required=True, help="the evaluator model (another than the steered one): "
                                                  + model_names_help())
    p.add_argument("--split", required=True, metavar="DIR",
                   help="AxBench split folder with inference/latent_eval_data.parquet, or bundled:concept10")
    p.add_argument("--layer", type=int, help="the evaluator block whose residuals are pooled (default: the middle)")
    p.add_argument("--out", required=True, metavar="DIR", help="c<id>.json per concept and detectors.csv")
    p.add_argument("--concepts", metavar="IDS", help="concept ids, e.g. 0,1 (default: every concept of the split)")
    p.add_argument("--max-tokens", type=int, default=256, help="texts are cut to this many tokens")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.set_defaults(run=run_detectors)

    p = stages.add_parser("negatives", help="concept-free answers to the training instructions for SimPO, by the "
                                            "unsteered model, filtered by the concept detectors")
    p.add_argument("--model", required=True, help="the model to be steered: " + model_names_help())
    p.add_argument("--split", required=True, metavar="DIR", help="AxBench split folder, or bundled:concept10")
    p.add_argument("--detectors", required=True, metavar="DET", help="an `axbench detectors` folder")
    p.add_argument("--out", required=True, metavar="FILE", help="the negatives JSONL (resumes concept by concept)")
    p.add_argument("--concepts", metavar="IDS", help="concept ids, e.g. 0,1 (default: every concept of the split)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threshold", type=float, default=0.5, help="an answer with P(concept) >= this is re-sampled")
    p.add_argument("--retries", type=int, default=3, help="re-samples (temperature 1) of a concept-carrying answer")
    p.add_argument("--max-examples", type=int, default=0,
                   help="answer only each concept's first N training instructions (as data.max_examples; 0 = all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.set_defaults(run=run_negatives)

    p = stages.add_parser("sacrifice", help="what each steering (or steering prompt) costs: the NLL of GPT-4's "
                                            "AlpacaEval answers, steered minus unsteered")
    p.add_argument("--model", required=True, help="the steered model: " + model_names_help())
    p.add_argument("--runs", metavar="TRAIN_OUT", help="output folder of `prosv-jax train` (the steerings)")
    p.add_argument("--prompting-file", metavar="F", help="the prompting baseline: JSONL {concept_id, prompt}")
    p.add_argument("--split", metavar="DIR", help="AxBench split folder, or bundled:concept10 (default: the runs')")
    p.add_argument("--concepts", metavar="IDS", help="concept ids, e.g. 0,1 (default: all trained)")
    p.add_argument("--out", required=True, metavar="DIR", help="c<id>.json per concept and sacrifice.csv")
    p.add_argument("--factors-from", metavar="REPORT", help="an `axbench score` folder: steer at the factor its "
                                                              "factor selection chose for --method (else: trained)")
    p.add_argument("--method", help="row label (default: the runs folder's name); with --factors-from, the method "
                                    "whose chosen factors to use")
    p.add_argument("--n-pairs", type=int, default=32, help="GPT-4 answers used (spread over AlpacaEval's 805)")
    p.add_argument("--max-answer", type=int, default=128, help="answers cut to this many tokens")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.set_defaults(run=run_sacrifice)

    p = stages.add_parser("judge", help="rate every answer on the three rubric questions")
    p.add_argument("--generations", required=True, metavar="DIR", help="an `axbench generate` output folder")
    p.add_argument("--out", metavar="DIR", help="ratings folder (default: <generations>/ratings)")
    _add_judge_args(p)
    p.set_defaults(run=run_judge)

    p = stages.add_parser("score", help="steering scores, summary table and plots from ratings")
    p.add_argument("--ratings", required=True, nargs="+", metavar="DIR",
                   help="ratings folders, or folders above them (searched for judge.json)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--utility", nargs="*", metavar="DIR", help="`axbench utility` output folders (for the table "
                                                               "and the utility-vs-robustness plot)")
    p.add_argument("--allow-mixed-concepts", action="store_true",
                   help="score a column whose methods were rated on different concepts (flagged in the table) "
                        "instead of refusing it")
    p.set_defaults(run=run_score)

    p = stages.add_parser("utility", help="multiple-choice / GSM8K-style accuracy with the first K steerings")
    p.add_argument("--model", required=True)
    p.add_argument("--runs", metavar="TRAIN_OUT")
    p.add_argument("--mc", metavar="FILE", help="multiple-choice JSONL (tinyMMLU format)")
    p.add_argument("--gsm", metavar="FILE", help="GSM8K-style JSONL (tinyGSM8K format)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--first-k", type=int, default=10)
    p.add_argument("--factor-scales", metavar="S", help="e.g. 1,0.8,0.5")
    p.add_argument("--prompting-file", metavar="F", help="also evaluate the prompting baseline")
    p.add_argument("--split", metavar="DIR")
    p.add_argument("--method")
    p.add_argument("--setting")
    p.add_argument("--no-unsteered", action="store_true")
    p.add_argument("--limit", type=int, help="use the first N items of each file")
    p.add_argument("--protocol", choices=("prosv", "reference"), default="prosv",
                   help="prosv: zero-shot prompts, 16/256 tokens, strict parses; reference: method.md's (few-shot "
                        "chat turns from --mc-shots/--gsm-shots, 128/512 tokens, the reference's answer matching)")
    p.add_argument("--include-diverged", action="store_true",
                   help="also evaluate runs that diverged in training (left out with a warning by default)")
    p.add_argument("--mc-shots", metavar="FILE", help="few-shot multiple-choice examples (reference protocol)")
    p.add_argument("--gsm-shots", metavar="FILE", help="few-shot GSM8K-style examples (reference protocol)")
    p.add_argument("--mc-max-new-tokens", type=int, help="default: 16 (prosv) or 128 (reference)")
    p.add_argument("--gsm-max-new-tokens", type=int, help="default: 256 (prosv) or 512 (reference)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.set_defaults(run=run_utility)

    p = stages.add_parser("robustness", help="answers under the suppression attack (then judge and score them)")
    _add_generation_args(p, with_factors=False)
    p.add_argument("--attack-file", metavar="F", help="JSONL {concept_id, instruction_index, instruction}")
    p.add_argument("--attack-template", action="store_true", help="append a fixed 'do not mention' request")
    p.add_argument("--attack-llm", action="store_true", help="the judge endpoint rewrites each instruction")
    _add_judge_args(p)
    p.set_defaults(run=run_robustness)

    p = stages.add_parser("prompts", help="write a prompting-baseline file with the judge LLM (or a template)")
    p.add_argument("--split", required=True, metavar="DIR")
    p.add_argument("--concepts", metavar="IDS")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--template", action="store_true",
                   help="no judge LLM: one fixed sentence naming the concept (concept_prompts.STEERING_PROMPT_TEMPLATE)")
    _add_judge_args(p)
    p.set_defaults(run=run_prompts)
