"""Is the gap to dense a re-training budget? Continue masked meta-training of finished models.

Takes a ``sparsity_curve.py`` run folder, continues the masked meta-training of each method's
checkpoint at one round (e.g. round09 = 85%) for N more iterations on a task stream disjoint
from every other stage, and evaluates on the run's fixed test tasks, paired with the dense
model. The dense model gets the same N extra iterations as a control (``dense+N``), so a gain
that only comes from more training is not credited to pruning.

    OMP_NUM_THREADS=1 METAPRUNE_DATA=../shared/data python benchmarks/extra_retrain.py \\
        --run-dir runs/sparsity_A --round 9 --iterations 300 --name sparsity_A_extra300

Each model is cached in RUN/extra/ (resumable after a kill).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _report import RESULTS, accuracy_columns, cached_evaluation, write_results

from metaprune.checkpoint import load_checkpoint, read_meta
from metaprune.data.tasks import OffsetSampler, TaskList
from metaprune.evaluation import EvalResult, evaluate, paired_difference
from metaprune.experiment import load_split, train_sampler
from metaprune.training import last_iteration, meta_train

EXTRA_TASK_OFFSET = 500_000_000  # dense training starts at 0, re-training at 1e9, scoring 2e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--round", type=int, required=True, help="round checkpoint to continue")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--meta-batch", type=int, help="default: the dense run's")
    ap.add_argument("--methods", help="default: every method folder of the run")
    ap.add_argument("--control-only", action="store_true",
                    help="train only the dense+N control; list each method's round model as "
                    "it is, paired against both the dense model and dense+N (is a pruned model "
                    "as good as a dense model meta-trained as long?)")
    ap.add_argument("--name", required=True, help="results file stem")
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    run = Path(args.run_dir)
    cfg = load_checkpoint(run / "dense", with_optimizer=False).meta["config"]
    meta_batch = args.meta_batch or int(cfg["train"]["meta_batch"])
    tasks = TaskList.load(run / "test_tasks.json")
    test_data = load_split(cfg["data"], "test_split")
    sampler = OffsetSampler(train_sampler(cfg, load_split(cfg["data"], "train_split")),
                      EXTRA_TASK_OFFSET)
    methods = (args.methods.split(",") if args.methods else
               sorted(p.name for p in run.iterdir() if (p / "state.json").exists()))
    progress = not args.no_progress
    dense = EvalResult.load(run / "eval_dense.json")
    rows = [{"model": "dense", "extra_iterations": 0, "sparsity": 0.0,
             **accuracy_columns(dense), "train_seconds": 0.0}]
    n = args.iterations
    sources = [("dense", run / "dense", 0.0)]
    for m in methods:
        rr = json.loads((run / m / f"round{args.round:02d}.json").read_text())["round_result"]
        sources.append((m, run / m / f"round{args.round:02d}", round(rr["sparsity"], 4)))
    trained = "The dense model" if args.control_only else \
        f"Models of `{run}` at round {args.round} (and the dense model as a control)"
    notes = (f"{trained} meta-trained for {n} more iterations x {meta_batch} tasks"
             f"{'' if args.control_only else ' with their masks'} (task stream offset "
             f"{EXTRA_TASK_OFFSET}, disjoint from dense training, re-training and scoring), "
             "evaluated on the run's fixed test tasks. `diff_vs_dense` is paired against the "
             "ORIGINAL dense model (0 extra iterations); compare `dense+N` to see what extra "
             "training alone gives.")
    if args.control_only:
        notes += (f" Each method's round-{args.round} model is listed as it is, and "
                  f"`diff_vs_dense+{n}` pairs it with the dense model trained {n} iterations "
                  "more.")
    title = (f"Extra meta-training of the dense control: {run.name}" if args.control_only
             else f"Extra masked meta-training: {run.name}")
    extra: dict[str, EvalResult] = {}  # label -> evaluation after the N extra iterations
    for label, src, sparsity in sources:
        if label != "dense":  # the model before the extra training
            res0 = EvalResult.load(run / label / f"eval_round{args.round:02d}.json")
            rows.append({"model": label, "extra_iterations": 0, "sparsity": sparsity,
                         **accuracy_columns(res0, paired_difference(res0, dense)),
                         "train_seconds": 0.0})
            if args.control_only:
                d = paired_difference(res0, extra["dense"])
                rows[-1][f"diff_vs_dense+{n}"] = round(100 * d.mean, 2)
                rows[-1][f"diff_vs_dense+{n}_ci95"] = round(100 * d.ci95, 2)
                continue
        out = run / "extra" / f"{label}_round{args.round:02d}_it{n}"
        done = last_iteration(out)
        learner = load_checkpoint(out if done else src).learner
        meta_train(learner, sampler, n, meta_batch, start_iteration=done or 0,
                   checkpoint_path=out, checkpoint_every=50,
                   meta={"config": cfg, "data": cfg["data"], "extra_from": str(src)},
                   progress=progress, desc=f"{label} +{n}")
        seconds = float(read_meta(out)["train_seconds"])  # meta_train records it
        res = cached_evaluation(
            out.with_name(out.name + "_eval.json"), tasks, learner,
            lambda lrn, desc=f"eval {label}": evaluate(
                lrn, test_data, tasks, progress=progress, desc=desc))
        extra[label] = res
        rows.append({"model": f"{label}+{n}", "extra_iterations": n, "sparsity": sparsity,
                     **accuracy_columns(res, paired_difference(res, dense)),
                     "train_seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
        write_results(Path(args.results_dir) / args.name, title, notes, rows)  # progress
    write_results(Path(args.results_dir) / args.name, title, notes, rows)
    if not args.control_only:
        _write_anp_versus(run, args, extra)


def _write_anp_versus(run: Path, args, extra: dict[str, EvalResult]) -> None:
    """``<name>_anp_vs.csv``: anp+N minus every other model+N (dense+N included), paired."""
    if "anp" not in extra:
        return
    n = args.iterations
    anp = extra["anp"]
    rows = []
    for label, res in extra.items():
        if label != "anp":
            d = paired_difference(anp, res)
            rows.append({"baseline": f"{label}+{n}", "anp_minus_baseline": round(100 * d.mean, 2),
                         "ci95": round(100 * d.ci95, 2), "tasks": int(anp.accuracies.size)})
    write_results(Path(args.results_dir) / f"{args.name}_anp_vs",
                  f"anp+{n} minus each model+{n}, paired: {run.name}",
                  f"From the evaluations of `{args.name}` (same extra budget for every model, "
                  "same test tasks); positive: anp better.", rows)


if __name__ == "__main__":
    main()
