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
from pathlib import Path

import torch
from _report import RESULTS, cached_evaluation, write_results

from metaprune.checkpoint import load_checkpoint
from metaprune.data.tasks import TaskList
from metaprune.evaluation import EvalResult, evaluate, paired_difference
from metaprune.experiment import load_split, train_sampler
from metaprune.masks import prunable_weights
from metaprune.pruning import PruneConfig
from metaprune.pruning.allocation import allocate
from metaprune.pruning.pruner import _score_tasks


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
    rows: list[dict] = []
    for run_dir in args.run_dir:
        for s in map(float, args.sparsity.split(",")):
            rows += _one_run(Path(run_dir), args.method, s, args.tasks)
            _write(args, rows)


def _one_run(run: Path, method: str, sparsity: float, n_tasks: int) -> list[dict]:
    dense = load_checkpoint(run / "dense", with_optimizer=False)
    cfg = dense.meta["config"]
    all_tasks = TaskList.load(run / "test_tasks.json")
    tasks = TaskList(all_tasks.specs[:n_tasks])
    test_data = load_split(cfg["data"], "test_split")
    sampler = train_sampler(cfg, load_split(cfg["data"], "train_split"))
    pcfg = PruneConfig(method=method, compensation="joint")
    criterion = pcfg.criterion()
    names = list(prunable_weights(dense.learner.model))
    scores = criterion.score(dense.learner, _score_tasks(sampler, pcfg, 1, "cpu"), names, seed=0)
    masks = allocate(scores.scores, sparsity, "layerwise", {})
    cache = run / "compensation_by_layer"
    cache.mkdir(exist_ok=True)

    def pruned(comp_layers: list[str]):
        lrn = copy.deepcopy(dense.learner)
        if comp_layers:
            criterion.compensate(lrn, scores, {n: masks[n] for n in comp_layers})
        lrn.set_masks(masks)
        params = dict(lrn.model.named_parameters())
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)
        return lrn

    variants = [("none", [])] + [(n, [n]) for n in names] + [("all", names)]
    results: dict[str, EvalResult] = {}
    out = []
    for label, layers in variants:
        key = f"{method}_s{sparsity:g}_{label}"
        results[label] = cached_evaluation(cache / f"{key}.json", tasks, lambda layers=layers:
                                           evaluate(pruned(layers), test_data, tasks,
                                                    progress=False))
        d = paired_difference(results[label], results["none"]) if label != "none" else None
        row = {"run": run.name, "learner": cfg["learner"]["name"], "method": method,
               "sparsity": sparsity, "compensated": label,
               "accuracy": round(100 * results[label].accuracy, 2),
               "ci95": round(100 * results[label].ci95, 2),
               "diff_vs_none": None if d is None else round(100 * d.mean, 2),
               "diff_ci95": None if d is None else round(100 * d.ci95, 2),
               "tasks": len(tasks)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def _write(args, rows: list[dict]) -> None:
    notes = (f"One-shot `{args.method}` pruning (no re-training) of each run's dense model, "
             "scored once on the pruner's first-round scoring tasks (20 tasks, conv patch "
             "stride 5, H from support and query), layer-wise allocation; the masks are the "
             "same in every row of a run. `compensated`: the layer(s) whose joint OBS "
             "compensation is applied before the masks. `diff_vs_none`: paired per-task "
             "difference (points) to the row without any compensation, with its 95% CI, on "
             f"the first {args.tasks} of the run's fixed test tasks.")
    write_results(Path(args.results_dir) / args.name,
                  f"OBS compensation layer by layer: {args.name}", notes, rows)


if __name__ == "__main__":
    main()
