"""The ``metaprune`` command line: one program, one subcommand per job.

Subcommands live next to the code they drive; each module exposes ``register(subparsers)``
which adds its parser and sets ``func`` to the handler. Every subcommand takes ``--threads``;
the heavy ones (``PARALLEL_COMMANDS``) also take ``--workers`` and run unchanged under
``torchrun --nproc-per-node N -m metaprune ...`` (see :mod:`metaprune.distributed`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
import warnings
from pathlib import Path

from . import distributed as mpdist
from .argtypes import POSITIVE
from .demo import DEMO_RETRAIN_META_BATCH
from .io import FolderInUseError, folder_lock

# modules that contribute subcommands (a missing optional module is skipped)
COMMAND_MODULES = [
    "metaprune.commands",          # demo, train, evaluate
    "metaprune.pruning.cli",       # prune
    "metaprune.deploy.cli",        # export, export-episode, adapt, export-onnx
]
# subcommands whose work is split by task over processes (--workers, torchrun)
PARALLEL_COMMANDS = ("train", "evaluate", "prune", "demo")
# subcommands that write into --out: refused while another live process works there
LOCKED_COMMANDS = ("train", "prune", "demo")
# evaluation: at least this many tasks per worker before another process pays for its start
EVAL_TASKS_PER_WORKER = 25
# seconds a rank other than 0 waits before printing its error (see main)
NON_MAIN_ERROR_DELAY = 2.0


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
        p.add_argument("--threads", type=POSITIVE, default=None,
                       help="torch threads per process (default: $METAPRUNE_THREADS, else 1: "
                       "more threads than free cores slow everything down)")
        if name in PARALLEL_COMMANDS:
            p.add_argument("--workers", type=POSITIVE, default=None,
                           help="processes on this machine, each with --threads threads "
                           "(default: $METAPRUNE_WORKERS, else one per physical core, or per "
                           "GPU with --device cuda); ignored under torchrun")
    return parser


def _work_units(args: argparse.Namespace) -> int | None:
    """How many processes the command's work can keep busy: the tasks of one meta-batch (or
    evaluation); None when that cannot be read here (the command will say why)."""
    if args.command == "train" and not (Path(args.out) / "model.json").exists():
        from .config import load_config

        # a bad config is reported here, before any worker starts
        return int(load_config(args.config, args.set)["train"]["meta_batch"])
    try:
        if args.command == "evaluate":
            return None if args.tasks is None else args.tasks // EVAL_TASKS_PER_WORKER
        if args.command == "demo":
            return DEMO_RETRAIN_META_BATCH
        if args.command == "train":
            from .checkpoint import read_meta

            return int(read_meta(Path(args.out) / "model.json")["config"]["train"]["meta_batch"])
        if args.command == "prune":
            from .checkpoint import read_meta

            cfg = read_meta(args.checkpoint).get("config") or {}
            return args.meta_batch or int((cfg.get("train") or {}).get("meta_batch", 4))
    except Exception:  # noqa: BLE001 (any unreadable input: the command reports it)
        return None
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
    # one live job per run folder (rank 0 holds the lock for the job)
    locked = args.command in LOCKED_COMMANDS and mpdist.is_main()
    with folder_lock(args.out) if locked else contextlib.nullcontext():
        return int(args.func(args) or 0)


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0): an exit code, like the rest
        return int(e.code or 0)
    try:
        return _run(args, argv)
    except (ValueError, FileNotFoundError, FolderInUseError) as e:
        if mpdist.is_main():
            print(f"metaprune {args.command}: error: {e}", file=sys.stderr)
        else:
            # Bad input fails on every rank alike, and the launcher stops the other ranks as
            # soon as rank 0 exits: wait a moment so that only rank 0 speaks. An error of this
            # rank alone (its share of the tasks) is still shown.
            time.sleep(NON_MAIN_ERROR_DELAY)
            print(f"[rank {mpdist.rank()}] metaprune {args.command}: error: {e}",
                  file=sys.stderr)
        return 2
    finally:
        mpdist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
