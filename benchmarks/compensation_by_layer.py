"""Which layer's OBS compensation helps or hurts? One-shot pruning, compensation layer by layer.

Scores a finished dense model once with an OBS criterion (anp or lobs) on the pruner's own
first-round scoring tasks, keeps the criterion's masks fixed, and evaluates the pruned model
(no re-training) with the OBS compensation applied to no layer, to each single layer, and to
every layer. Each row is paired with the no-compensation row on the same test tasks, so the
table shows what each layer's compensation is worth at that sparsity.

    OMP_NUM_THREADS=1 METAPRUNE_DATA=../shared/data python benchmarks/compensation_by_layer.py \\
        --run-dir runs/sparsity_A --run-dir runs/sparsity_E-fomaml --sparsity 0.5 \\
        --name compensation_by_layer
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterator
from pathlib import Path

from _report import RESULTS, cached_evaluation, write_results

from metaprune.checkpoint import load_checkpoint
from metaprune.data.tasks import TaskList
from metaprune.evaluation import EvalResult, evaluate, paired_difference
from metaprune.experiment import load_split, train_sampler
from metaprune.masks import prunable_weights
from metaprune.pruning import PruneConfig
from metaprune.pruning.allocation import allocate
from metaprune.pruning.pruner import scoring_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", action="append", required=True,
                    help="a sparsity_curve run dir (dense + test tasks); repeatable")
    ap.add_argument("--method", default="anp", choices=["anp", "lobs"])
    ap.add_argument("--sparsity", default="0.5", help="comma-separated one-shot sparsities")
    ap.add_argument("--tasks", type=int, default=300, help="first N of each run's test tasks")
    ap.add_argument("--name", required=True, help="results file stem")
    ap.add_argument("--results-dir", default=str(RESULTS))
    args = ap.parse_args()
    sparsities = [float(x) for x in args.sparsity.split(",")]
    rows: list[dict] = []
    for run_dir in args.run_dir:
        for part in _one_run(Path(run_dir), args.method, sparsities, args.tasks):
            rows += part
            _write(args, rows)


def _one_run(run: Path, method: str, sparsities: list[float], n_tasks: int
             ) -> Iterator[list[dict]]:
    """Score the run's dense model once; yield the rows of each sparsity in turn."""
    dense = load_checkpoint(run / "dense", with_optimizer=False)
    cfg = dense.meta["config"]
    tasks = TaskList(TaskList.load(run / "test_tasks.json").specs[:n_tasks])
    test_data = load_split(cfg["data"], "test_split")
    sampler = train_sampler(cfg, load_split(cfg["data"], "train_split"))
    pcfg = PruneConfig(method=method, compensation="joint")
    criterion = pcfg.criterion()
    names = list(prunable_weights(dense.learner.model))
    scores = criterion.score(dense.learner, scoring_tasks(sampler, pcfg.tasks, 1), names, seed=0)
    cache = run / "compensation_by_layer"
    cache.mkdir(exist_ok=True)
    variants = [("none", [])] + [(n, [n]) for n in names] + [("all", names)]
    for sparsity in sparsities:
        masks = allocate(scores.scores, sparsity, "layerwise", {})

        def pruned(comp_layers: list[str], masks=masks):
            lrn = copy.deepcopy(dense.learner)
            if comp_layers:
                criterion.compensate(lrn, scores, {n: masks[n] for n in comp_layers})
            lrn.set_masks(masks)  # zeroes the pruned weights
            return lrn

        results: dict[str, EvalResult] = {}
        out: list[dict] = []
        for label, layers in variants:
            key = f"{method}_s{sparsity:g}_{label}"
            results[label] = cached_evaluation(cache / f"{key}.json", tasks, pruned(layers),
                                               lambda lrn: evaluate(lrn, test_data, tasks,
                                                                    progress=False))
            d = paired_difference(results[label], results["none"]) if label != "none" else None
            out.append({"run": run.name, "learner": cfg["learner"]["name"], "method": method,
                        "sparsity": sparsity, "compensated": label,
                        "accuracy": round(100 * results[label].accuracy, 2),
                        "ci95": round(100 * results[label].ci95, 2),
                        "diff_vs_none": None if d is None else round(100 * d.mean, 2),
                        "diff_ci95": None if d is None else round(100 * d.ci95, 2),
                        "tasks": len(tasks)})
            print(json.dumps(out[-1]), flush=True)
        yield out


def _write(args, rows: list[dict]) -> None:
    notes = (f"One-shot `{args.method}` pruning (no re-training) of each run's dense model, "
             "scored once on the pruner's first-round scoring tasks (20 tasks, conv patch "
             "stride 5, H from support and query), layer-wise allocation; the masks are the "
             "same in every row of a run and sparsity. `compensated`: the layer(s) whose joint OBS "
             "compensation is applied before the masks. `diff_vs_none`: paired per-task "
             "difference (points) to the row without any compensation, with its 95% CI, on "
             f"the first {args.tasks} of the run's fixed test tasks.")
    write_results(Path(args.results_dir) / args.name,
                  f"OBS compensation layer by layer: {args.name}", notes, rows)


if __name__ == "__main__":
    main()
