"""The `prosv-jax` command line: one sub-command per job, each in `prosv_jax/commands/`."""

from __future__ import annotations

import argparse
import sys

from prosv_jax.commands import axbench, demo, generate, train

COMMANDS = (demo, generate, train, axbench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prosv-jax", description="Train, apply and study steering vectors for LLMs in JAX (offline-first).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, KeyError) as error:  # user errors: a message, not a traceback
        print(f"prosv-jax {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
