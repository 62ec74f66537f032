"""The `reasonrec` command line.

Each package owns its subcommands in `<package>/cli.py` with a `register(subparsers)` function;
this module only assembles them, so `serving` stays the top of the import graph. Heavy imports
happen inside command handlers, never at parse time, so `reasonrec --help` is instant.

A handler returns an exit code. A `ReasonrecError` (bad input, bad config, bad artifact) is
printed as one clear line and exits 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from sid_index.errors import ReasonrecError

# Packages that contribute subcommands; a module that does not exist yet is skipped.
_COMMAND_MODULES = (
    "sid_index.datasets.cli",
    "sid_index.cli",
    "trainer.cli",
    "slow_path.cli",
    "fast_path.cli",
    "serving.commands",
    "serving.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="reasonrec",
        description="Reasoning-augmented generative recommendation (Semantic IDs, a reasoner "
        "on the slow path, a fast SID decoder on the fast path).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `reasonrec` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # FAISS logs which SIMD build it probed at INFO on every import; not news to an operator.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(handler(args) or 0)
    except ReasonrecError as exc:
        print(f"reasonrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
