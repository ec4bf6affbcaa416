"""Subcommands ``train``, ``evaluate`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .argtypes import FRACTION, NON_NEGATIVE, POSITIVE
from .checkpoint import load_checkpoint, save_checkpoint
from .config import config_diff, load_config, validate_config
from .distributed import barrier, check_device, is_main
from .evaluation import EvalResult, evaluate, paired_difference
from .experiment import load_split, make_learner, test_tasks, train_sampler
from .training import last_iteration, meta_train


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a model from a config (resumes if killed)")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.iterations=200")
    p.add_argument("--out", required=True, help="run folder (checkpoint 'model', eval files)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in --out, deleting the run found there")
    p.add_argument("--extend", action="store_true",
                   help="continue the run in --out to a larger train.iterations (every other "
                   "setting must be the run's); the result equals training that long at once")
    p.add_argument("--eval-tasks", type=POSITIVE,
                   help="test tasks after training (default: config)")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="paired few-shot evaluation of a checkpoint")
    p.add_argument("checkpoint", help="checkpoint path (NAME, NAME.safetensors or NAME.json)")
    p.add_argument("--tasks", type=POSITIVE,
                   help="number of fixed test tasks (default: config, 600)")
    p.add_argument("--steps", type=NON_NEGATIVE,
                   help="test-time adaptation steps (default: learner's)")
    p.add_argument("--split", help="data split (default: the config's test split)")
    p.add_argument("--root", help="data root (default: checkpoint's, then $METAPRUNE_DATA)")
    p.add_argument("--save", help="write per-task accuracies (JSON) for paired comparisons")
    p.add_argument("--compare", help="per-task JSON of another model on the same tasks: "
                   "print the paired difference (this - other)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="train, prune (ANP vs magnitude) and evaluate on the "
                       "embedded glyphs data; prints one table")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--iterations", type=POSITIVE, default=600,
                   help="dense meta-training iterations")
    p.add_argument("--retrain-iters", type=NON_NEGATIVE, default=60,
                   help="masked re-meta-training iterations per pruning round")
    p.add_argument("--sparsity", type=FRACTION, default=0.85)
    p.add_argument("--tasks", type=POSITIVE, default=600, help="fixed test tasks")
    p.add_argument("--width", type=POSITIVE, default=32, help="Conv4 width")
    p.add_argument("--methods", default="anp,magnitude", help="comma-separated criteria")
    p.add_argument("--exclude-first", action="store_true",
                   help="do not prune the first conv layer (9 weights per filter here)")
    p.add_argument("--exclude-last", action="store_true", help="do not prune the head")
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("download", help="fetch a benchmark dataset into DIR (checksums "
                       "verified); then point METAPRUNE_DATA at DIR")
    p.add_argument("dataset", choices=sorted(DOWNLOADS), help="dataset to fetch")
    p.add_argument("dir", help="data root: files go to DIR/<dataset>/")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.set_defaults(func=cmd_download)


# files of a train run folder (the checkpoint 'model' and what is derived from it)
TRAIN_RUN_FILES = ("model.safetensors", "model.json", "eval_test.json", "test_tasks.json")


def check_resumable(out: Path, saved: dict, cfg: dict, done: int, extend: bool) -> None:
    """Refuse, naming the keys, to continue the run in ``out`` (``done`` iterations, made with
    ``saved``) under ``cfg``: the same config resumes or reuses it; ``extend`` also allows a
    larger ``train.iterations`` (the sampler and the optimiser state continue where they
    stopped, so the extended model equals one trained that long at once)."""
    diff = config_diff(saved, cfg)
    other = [d for d in diff if not d.startswith("train.iterations:")]
    fresh = "start fresh with a new --out or --overwrite"
    if extend and other:
        raise ValueError(f"--extend may change only train.iterations, but '{out}' was made with "
                         f"other settings too ({'; '.join(other[:6])}): repeat them, or {fresh}")
    if not extend and diff:
        hint = (f"add --extend to continue it to {cfg['train']['iterations']} iterations, or "
                if not other else "repeat its --config/--set to resume it, or ")
        raise ValueError(f"'{out}' holds a run made with another config ({'; '.join(diff[:6])})"
                         f": {hint}{fresh}")
    floor = max(done, int(saved["train"]["iterations"]))
    if extend and int(cfg["train"]["iterations"]) < floor:
        raise ValueError(f"--extend: '{out}' holds a run of {floor} iterations ({done} done); "
                         f"train.iterations must be at least that, got "
                         f"{cfg['train']['iterations']}")


def cmd_train(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    out = Path(args.out)
    ckpt = out / "model"
    cfg = load_config(args.config, args.set)
    if args.overwrite and args.extend:
        raise ValueError("--overwrite deletes the run that --extend would continue: give one")
    if args.overwrite:
        if is_main():
            for name in TRAIN_RUN_FILES:
                (out / name).unlink(missing_ok=True)
        barrier()
    done = last_iteration(ckpt)
    extended_from: list[int] = []
    if done is None and args.extend:
        raise ValueError(f"--extend: '{out}' holds no trained model to continue")
    if done is not None:  # resume or reuse, only with the config that made the run
        c = load_checkpoint(ckpt, device=device)
        saved = validate_config(c.meta["config"])
        check_resumable(out, saved, cfg, done, args.extend)
        learner = c.learner
        extended_from = list(c.meta.get("extended_from", []))
        if saved["train"]["iterations"] != cfg["train"]["iterations"]:
            extended_from.append(done)
        if is_main():
            print(f"resuming {ckpt} from iteration {done}", file=sys.stderr)
    else:
        learner = None
        done = 0
    train_data = load_split(cfg["data"], "train_split")
    if learner is None:
        learner = make_learner(cfg, train_data, device)
    meta = {"config": cfg, "data": cfg["data"], "kind": "dense"}
    if extended_from:  # the iterations done when --extend raised train.iterations
        meta["extended_from"] = extended_from
    t = cfg["train"]
    meta_train(learner, train_sampler(cfg, train_data), int(t["iterations"]),
               int(t["meta_batch"]), start_iteration=done, checkpoint_path=ckpt,
               checkpoint_every=int(t["checkpoint_every"]), meta=meta, device=device,
               progress=not args.no_progress)
    test_data = load_split(cfg["data"], "test_split")
    tasks = test_tasks(cfg, test_data, args.eval_tasks)
    res = evaluate(learner, test_data, tasks, device=device, progress=not args.no_progress)
    if is_main():
        tasks.save(out / "test_tasks.json")
        res.save(out / "eval_test.json")
        meta = load_checkpoint(ckpt, device=device, with_optimizer=False).meta
        meta["metrics"] = {"test": res.summary()}
        save_checkpoint(ckpt, learner, meta)
    barrier()
    print(f"meta-test accuracy: {100 * res.accuracy:.2f} +- {100 * res.ci95:.2f}% "
          f"({len(tasks)} tasks, {res.steps} adaptation steps); checkpoint: {ckpt}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    c = load_checkpoint(args.checkpoint, device=device, with_optimizer=False)
    cfg = c.meta.get("config")
    if not cfg:
        raise ValueError(f"checkpoint '{args.checkpoint}' has no config in its sidecar")
    split = args.split or cfg["data"]["test_split"]
    data_cfg = {**cfg["data"], "test_split": split}
    dataset = load_split(data_cfg, "test_split", root=args.root)
    tasks = test_tasks(cfg, dataset, args.tasks, split)
    res = evaluate(c.learner, dataset, tasks, steps=args.steps, device=device,
                   progress=not (args.no_progress or args.json))
    summary = {"checkpoint": str(args.checkpoint), "split": split, **res.summary()}
    if args.save and is_main():
        res.save(args.save)
    if args.compare:
        diff = paired_difference(res, EvalResult.load(args.compare))
        summary["paired_difference"] = {"mean": diff.mean, "ci95": diff.ci95,
                                        "versus": args.compare}
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        print(f"{args.checkpoint}: {100 * res.accuracy:.2f} +- {100 * res.ci95:.2f}% "
              f"on {len(tasks)} {split} tasks ({res.steps} adaptation steps)")
        if args.compare:
            print(f"paired difference vs {args.compare}: {diff}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args, check_device(args.device))




# what `metaprune download` can fetch: name -> (fetch(root, force) -> files, or None with the
# reason it cannot be fetched automatically)
MINIIMAGENET_HOWTO = (
    "mini-ImageNet has no official automatic download: its images are a subset of ImageNet, "
    "whose licence requires each user to accept its terms at https://image-net.org. Get the "
    "images there, put mini-imagenet-100.zip (or images/ with train.csv, val.csv, test.csv of "
    "Ravi & Larochelle's split) under DIR/mini-imagenet/, and set METAPRUNE_DATA=DIR.")
DOWNLOADS = {"omniglot": None, "miniimagenet": MINIIMAGENET_HOWTO}


def cmd_download(args: argparse.Namespace) -> int:
    from .data import download_omniglot

    if DOWNLOADS[args.dataset] is not None:
        raise ValueError(DOWNLOADS[args.dataset].replace("DIR", args.dir))
    files = download_omniglot(args.dir, force=args.force)
    for f in files:
        print(f"{f}: sha256 verified")
    print(f"done: export METAPRUNE_DATA={Path(args.dir).resolve()}")
    return 0
