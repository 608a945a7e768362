"""`prosv-jax demo`: the README's main job, offline: PrOSV vs FSSV on the small pretrained model (see prosv_jax.demo)."""

from __future__ import annotations

import argparse
import dataclasses
import os


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="offline demo: train a PrOSV and an FSSV on the small model, compare answers, sweep",
        description="Gets the small pretrained chat model (trained once on the bundled text, then cached), trains a "
                    "PrOSV (first 2 + last 2 prompt tokens) and an FSSV (every token) for an AxBench concept10 "
                    "concept with the paper's recipe, prints unsteered / PrOSV / FSSV answers to the same "
                    "AlpacaEval instructions, runs a beta x eta_alpha sweep of the PrOSV scored on held-out "
                    "examples, and writes plots and a summary to --out. No download, no GPU: about 10 minutes on "
                    "2 CPU cores the first time (the small model's training is most of it). A rerun reuses "
                    "finished training.")
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--concept", type=int, default=None, metavar="ID",
                        help="AxBench concept10 concept id, 0..9 (default: 8, communist ideology)")
    parser.add_argument("--quick", action="store_true",
                        help="a one-minute version: a briefly trained small model, fewer epochs, a 2x2 sweep")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prosv_jax.demo import QUICK, DemoSettings, format_answers, format_summary, run_demo

    settings = QUICK if args.quick else DemoSettings()
    if args.concept is not None:
        settings = dataclasses.replace(settings, concept_id=args.concept)
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
    print(f"results in {out} (open summary.md, answers.md, sweep_heatmap.png, */loss_curves.png)")
    return 0
