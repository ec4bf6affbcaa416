"""The ``metaprune`` command line: one program, one subcommand per job.

Subcommands live next to the code they drive; each module exposes ``register(subparsers)``
which adds its parser and sets ``func`` to the handler.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# modules that contribute subcommands (a missing optional module is skipped)
COMMAND_MODULES = [
    "metaprune.commands",          # demo, train, evaluate
    "metaprune.pruning.cli",       # prune
    "metaprune.deploy.cli",        # export, export-episode, adapt, export-onnx
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metaprune",
        description="Adaptation-aware pruning of meta-trained few-shot networks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"metaprune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
