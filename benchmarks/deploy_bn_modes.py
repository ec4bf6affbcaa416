"""Accuracy of the device runtime's BatchNorm modes on fixed test tasks.

For each task: the library's evaluation (``learner.evaluate_task``: query-batch statistics),
the runtime with ``bn="batch"`` (must equal the library), the runtime's default
``bn="support"`` (statistics frozen from the support set, each query independent) and the
query-batch mode fed one query at a time (what batch-1 inference with batch statistics gives).

    python benchmarks/deploy_bn_modes.py CHECKPOINT [--tasks 600] [--queries 15] [--seed 12345]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from metaprune.checkpoint import load_checkpoint
from metaprune.config import parse_key_value
from metaprune.data.registry import get_dataset
from metaprune.data.tasks import TaskSampler
from metaprune.deploy.format import mpz_from_learner
from metaprune.deploy.runtime import DeviceModel


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", default="glyphs")
    ap.add_argument("--split", default="test")
    ap.add_argument("--root")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="dataset option, e.g. --option image_size=28 (repeatable)")
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--n-way", type=int, default=5)
    ap.add_argument("--k-shot", type=int, default=1)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ck = load_checkpoint(args.checkpoint, with_optimizer=False)
    learner = ck.learner
    dm = DeviceModel(mpz_from_learner(learner), args.checkpoint)
    options = dict(parse_key_value(o, "--option") for o in args.option)
    ds = get_dataset(args.dataset, args.split, args.root, **options)
    sampler = TaskSampler(ds, args.n_way, args.k_shot, args.queries, seed=args.seed)
    accs: dict[str, list[float]] = {"library (query batch)": [], "runtime bn=batch": [],
                                    "runtime bn=support": [], "runtime bn=batch, batch 1": []}
    t0 = time.time()
    for i in range(args.tasks):
        t = sampler.task(i)
        accs["library (query batch)"].append(learner.evaluate_task(t))
        a = dm.adapt(t.support_x, t.support_y)
        for key, logits in (("runtime bn=batch", a.logits(t.query_x, bn="batch")),
                            ("runtime bn=support", a.logits(t.query_x)),
                            ("runtime bn=batch, batch 1", torch.cat(
                                [a.logits(t.query_x[j:j + 1], bn="batch")
                                 for j in range(len(t.query_x))]))):
            accs[key].append((logits.argmax(1) == t.query_y).float().mean().item())
    print(f"{args.checkpoint}: {args.dataset}/{args.split} {args.n_way}-way {args.k_shot}-shot,"
          f" {args.queries} queries/class, {args.tasks} tasks (seed {args.seed}), "
          f"{time.time() - t0:.0f} s")
    print("| BatchNorm statistics for prediction | accuracy (%) | 95% CI |")
    print("|---|---:|---:|")
    for k, v in accs.items():
        m = sum(v) / len(v)
        sd = math.sqrt(sum((x - m) ** 2 for x in v) / max(len(v) - 1, 1))
        print(f"| {k} | {100 * m:.2f} | +- {196 * sd / math.sqrt(len(v)):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
