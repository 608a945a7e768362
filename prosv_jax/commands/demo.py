"""`prosv-jax demo`: the README's main job on its offline default (the built-in tiny model, no download)."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="offline demo on the built-in tiny model",
        description="Builds (or reuses) the built-in tiny model and tokenizer, then answers a few AlpacaEval "
                    "instructions with the chat template. Runs offline on a CPU in under a minute.")
    parser.add_argument("--out", default="outputs/demo", help="folder for the results (default: outputs/demo)")
    parser.add_argument("--num-prompts", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prosv_jax.builtin import builtin_model_dir
    from prosv_jax.commands.generate import generate_texts
    from prosv_jax.tokenization import builtin_corpus

    model_dir = builtin_model_dir()
    print(f"model: built-in tiny Gemma-2-shaped decoder (random weights) at {model_dir}")
    prompts = builtin_corpus()[: args.num_prompts]
    results = generate_texts(model_dir, prompts, max_new_tokens=args.max_new_tokens, chat=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "generations.jsonl")
    with open(path, "w") as f:
        for result in results:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")
            print(f"### {result['prompt']}\n{result['text']!r}\n")
    print(f"wrote {path}")
    return 0
