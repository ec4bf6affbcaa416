"""Validation curves of pruning runs: every round against the dense model, and two runs of the
same command against each other, on one fixed list of VALIDATION tasks.

    python benchmarks/validation_curves.py --run anp=runs/ootb_b_like/anp \\
        --run maxdrop=runs/ootb_b_like/anp_maxdrop1 --rounds 4,5,6,7 --tasks 300 \\
        --name validation_curves_omniglot20

Each run folder is a ``metaprune prune`` output (state.json, roundNN); all runs must prune the
same dense model (``source_digest``). Evaluations are cached in each run's ``validation/``
folder, as ``metaprune prune --max-drop`` does (a result is reused only if it is the evaluation
of that model on these tasks), so the rounds a ``--max-drop`` run validated cost nothing. With
two runs, ``second_minus_first`` is their paired difference at each common round: how far two
runs that should agree end up apart, against the paired CI of one run's curve.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _report import RESULTS, write_results

from metaprune.checkpoint import load_checkpoint
from metaprune.evaluation import paired_difference
from metaprune.experiment import load_split, test_tasks
from metaprune.pruning.budget import Validator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                    help="a pruning run folder (repeatable)")
    ap.add_argument("--rounds", default=None,
                    help="comma-separated rounds to evaluate (default: every finished round)")
    ap.add_argument("--tasks", type=int, default=300, help="fixed validation tasks")
    ap.add_argument("--split", default=None,
                    help="validation split (default: the config's data.val_split, else 'val')")
    ap.add_argument("--name", required=True)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    runs: dict[str, tuple[Path, dict]] = {}
    for item in args.run:
        label, sep, folder = item.partition("=")
        state = Path(folder) / "state.json"
        if not sep or not state.is_file():
            raise SystemExit(f"--run expects LABEL=DIR with DIR/state.json, got '{item}'")
        runs[label] = (Path(folder), json.loads(state.read_text()))
    sources = {s["source_digest"] for _, s in runs.values()}
    if len(sources) != 1:
        raise SystemExit(f"the runs prune different dense models (digests {sorted(sources)})")
    first_dir = next(iter(runs.values()))[0]
    source = load_checkpoint(first_dir / "round01").meta["source_checkpoint"]
    dense = load_checkpoint(source)
    if dense.learner.digest() != sources.pop():
        raise SystemExit(f"'{source}' is no longer the dense model these runs pruned")
    cfg = dense.meta["config"]
    split = args.split or cfg["data"].get("val_split") or "val"
    if split == cfg["data"]["test_split"]:
        raise SystemExit(f"--split '{split}' is the test split")
    dataset = load_split({**cfg["data"], "val_split": split}, "val_split")
    tasks = test_tasks(cfg, dataset, args.tasks, split)
    wanted = None if args.rounds is None else {int(r) for r in args.rounds.split(",")}
    per_run: dict[str, dict[int, object]] = {}
    rows = []
    for label, (folder, state) in runs.items():
        val = Validator(dataset, tasks, folder, "cpu", not args.no_progress)
        val.point(0, 0.0, dense.learner)
        per_run[label] = {}
        for r in state["rounds"]:
            if wanted is not None and r["round"] not in wanted:
                continue
            learner = load_checkpoint(folder / f"round{r['round']:02d}").learner
            p = val.point(r["round"], r["sparsity"], learner)
            per_run[label][r["round"]] = val.result(f"round{r['round']:02d}", learner)
            rows.append({"run": label, "folder": str(folder), "round": r["round"],
                         "sparsity": round(r["sparsity"], 4), "accuracy": round(p.accuracy, 2),
                         "ci95": round(p.ci95, 2), "drop": round(p.drop, 2),
                         "drop_ci95": round(p.drop_ci95, 2)})
    labels = list(per_run)
    if len(labels) == 2:
        a, b = (per_run[x] for x in labels)
        for row in rows:
            if row["run"] == labels[1] and row["round"] in a:
                d = paired_difference(b[row["round"]], a[row["round"]])
                row.update(second_minus_first=round(100 * d.mean, 2),
                           second_minus_first_ci95=round(100 * d.ci95, 2))
    notes = (f"Dense model `{source}`; {len(tasks)} fixed tasks of the `{split}` split "
             f"(fingerprint {tasks.fingerprint()}); `drop`: dense minus the round's model, "
             "paired, in points; `second_minus_first`: the second run's round minus the first "
             f"run's same round ({' minus '.join(reversed(labels))}), paired, in points.")
    write_results(RESULTS / args.name, "Validation curves of pruning runs", notes, rows)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
