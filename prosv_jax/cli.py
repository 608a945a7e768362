"""The `prosv-jax` command line: one sub-command per job, each in `prosv_jax/commands/`."""

from __future__ import annotations

import argparse
import sys

from prosv_jax.commands import axbench, demo, generate, models, train
from prosv_jax.models.hf_config import accepted_config_fields

COMMANDS = (demo, generate, train, axbench, models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prosv-jax", description="Train, apply and study steering vectors for LLMs in JAX (offline-first).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    for leaf in _leaf_parsers(parser):
        leaf.add_argument("--accept-config-field", action="append", default=[], metavar="NAME",
                          help="accept a model config.json field that prosv-jax does not know, as one that does not "
                               "change the model's math (repeatable)")
    return parser


def _leaf_parsers(parser: argparse.ArgumentParser):
    """The parsers that run a command (those without sub-commands of their own)."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield parser
    for action in actions:
        for child in dict.fromkeys(action.choices.values()):
            yield from _leaf_parsers(child)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can fix, printed as one line (exit 2): bad values and files (ValueError, FileNotFoundError), and a
    judge endpoint that fails for good (JudgeError, PartialRatings). Anything else (a KeyError, ...) is a bug in
    prosv-jax and keeps its traceback."""
    from prosv_jax.evaluation.judges import JudgeError
    from prosv_jax.evaluation.rating import PartialRatings

    return ValueError, FileNotFoundError, JudgeError, PartialRatings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with accepted_config_fields(getattr(args, "accept_config_field", ())):
            return args.run(args)
    except user_errors() as error:  # a message, not a traceback
        print(f"prosv-jax {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
