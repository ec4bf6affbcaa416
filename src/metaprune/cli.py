"""The ``metaprune`` command line: one program, one subcommand per job.

Subcommands live next to the code they drive; each module exposes ``register(subparsers)``
which adds its parser and sets ``func`` to the handler. Every subcommand takes ``--threads``;
the heavy ones (``PARALLEL_COMMANDS``) also take ``--workers`` and run unchanged under
``torchrun --nproc-per-node N -m metaprune ...`` (see :mod:`metaprune.distributed`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from . import distributed as mpdist

# modules that contribute subcommands (a missing optional module is skipped)
COMMAND_MODULES = [
    "metaprune.commands",          # demo, train, evaluate
    "metaprune.pruning.cli",       # prune
    "metaprune.deploy.cli",        # export, export-episode, adapt, export-onnx
]
# subcommands whose work is split by task over processes (--workers, torchrun)
PARALLEL_COMMANDS = ("train", "evaluate", "prune", "demo")
# evaluation: at least this many tasks per worker before another process pays for its start
EVAL_TASKS_PER_WORKER = 25


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
    for name, p in sub.choices.items():
        p.add_argument("--threads", type=int, default=None,
                       help="torch threads per process (default: $METAPRUNE_THREADS, else 1: "
                       "more threads than free cores slow everything down)")
        if name in PARALLEL_COMMANDS:
            p.add_argument("--workers", type=int, default=None,
                           help="processes on this machine, each with --threads threads "
                           "(default: $METAPRUNE_WORKERS, else one per physical core, or per "
                           "GPU with --device cuda); ignored under torchrun")
    return parser


def _work_units(args: argparse.Namespace) -> int | None:
    """How many processes the command's work can keep busy (None: no cap)."""
    if args.command == "evaluate" and args.tasks is not None:
        return args.tasks // EVAL_TASKS_PER_WORKER
    return None


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    threads = mpdist.resolve_threads(args.threads)
    if hasattr(args, "workers") and not mpdist.in_launched_job():
        gpus = (torch_cuda_count() if getattr(args, "device", "cpu").startswith("cuda")
                else None)
        n = mpdist.resolve_workers(args.workers, _work_units(args), gpus)
        if n > 1:
            return mpdist.launch(n, argv, threads)
    mpdist.apply_threads(threads)
    mpdist.tune_allocator()
    if hasattr(args, "device"):
        args.device = mpdist.init_from_env(args.device)
    if not mpdist.is_main():  # rank 0 speaks for the job
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        warnings.simplefilter("ignore")
        if hasattr(args, "no_progress"):
            args.no_progress = True
    return int(args.func(args) or 0)


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args, argv)
    except (ValueError, FileNotFoundError) as e:
        if mpdist.is_main():  # every rank got the same input and the same error
            print(f"metaprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        mpdist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
