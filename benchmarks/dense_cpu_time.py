"""CPU time of a dense model's meta-training, for dense models that were trained elsewhere.

Settings A and B meta-trained their dense models on a GPU. This times the same configuration
(read from each run's ``dense.json``) on this CPU: ``--warmup`` untimed iterations, then
``--iterations`` timed ones on the same task stream the real run started with, and scales the
time per iteration to the run's full iteration count. The estimate ignores checkpoint writes
(a few per run). With ``--eval-tasks N`` it also times the evaluation of the run's dense model
on the first N of its fixed test tasks and scales it to all of them (a pruned model evaluates
at the same cost: its masked weights are still computed densely).

    OMP_NUM_THREADS=1 METAPRUNE_DATA=../shared/data python benchmarks/dense_cpu_time.py \
        --run-dir runs/sparsity_A --run-dir runs/sparsity_B
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _report import RESULTS, write_results

from metaprune.checkpoint import load_checkpoint
from metaprune.data.tasks import TaskList
from metaprune.evaluation import evaluate
from metaprune.experiment import load_split, make_learner, train_sampler
from metaprune.training import meta_train


def time_eval(run_dir: Path, cfg: dict, n_tasks: int) -> dict:
    all_tasks = TaskList.load(run_dir / "test_tasks.json")
    tasks = TaskList(all_tasks.specs[:n_tasks])
    test_data = load_split(cfg["data"], "test_split")
    learner = load_checkpoint(run_dir / "dense").learner
    evaluate(learner, test_data, TaskList(all_tasks.specs[:2]), progress=False)  # warm-up
    t0 = time.perf_counter()
    evaluate(learner, test_data, tasks, progress=False)
    per_task = (time.perf_counter() - t0) / len(tasks)
    return {"timed_eval_tasks": len(tasks), "eval_seconds_per_task": round(per_task, 4),
            "test_tasks": len(all_tasks),
            "estimated_eval_minutes": round(per_task * len(all_tasks) / 60, 2)}


def time_dense(run_dir: Path, warmup: int, iterations: int, eval_tasks: int = 0) -> dict:
    doc_path = run_dir / "dense.json"
    if not doc_path.exists():
        raise SystemExit(f"{doc_path}: no dense checkpoint (run sparsity_curve.py first)")
    doc = json.loads(doc_path.read_text())
    cfg = doc["config"]
    train_data = load_split(cfg["data"], "train_split")
    sampler = train_sampler(cfg, train_data)
    learner = make_learner(cfg, train_data, "cpu")
    meta_batch = int(cfg["train"]["meta_batch"])
    meta_train(learner, sampler, warmup, meta_batch, progress=False)
    t0 = time.perf_counter()
    meta_train(learner, sampler, warmup + iterations, meta_batch, start_iteration=warmup,
               progress=False)
    per_iteration = (time.perf_counter() - t0) / iterations
    full = int(doc["iteration"])
    evals = time_eval(run_dir, cfg, eval_tasks) if eval_tasks > 0 else {}
    return {"run": run_dir.name, "n_way": cfg["data"]["n_way"],
            "model": f"{cfg['model']['name']} {cfg['model'].get('kwargs') or {}}",
            "learner": f"{cfg['learner']['name']} ({cfg['learner'].get('inner_steps')} "
                       "inner steps)",
            "meta_batch": meta_batch, "timed_iterations": iterations,
            "cpu_seconds_per_iteration": round(per_iteration, 3),
            "full_iterations": full,
            "estimated_cpu_minutes": round(per_iteration * full / 60, 1),
            "recorded_seconds": round(float(doc.get("train_seconds", 0.0)), 1), **evals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", action="append", required=True, type=Path,
                    help="a sparsity_curve run folder holding dense.json (repeatable)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=30, help="timed iterations per run")
    ap.add_argument("--eval-tasks", type=int, default=0,
                    help="also time the dense model's evaluation on this many test tasks")
    ap.add_argument("--name", default="dense_cpu_time")
    ap.add_argument("--note", default="", help="extra sentence for the results file")
    args = ap.parse_args()
    if args.iterations < 1 or args.warmup < 0 or args.eval_tasks < 0:
        raise SystemExit("--iterations must be >= 1, --warmup and --eval-tasks >= 0")
    rows = [time_dense(d, args.warmup, args.iterations, args.eval_tasks) for d in args.run_dir]
    notes = (f"Torch threads: {torch.get_num_threads()}. `cpu_seconds_per_iteration`: mean "
             f"over {args.iterations} timed meta-training iterations after {args.warmup} "
             "untimed ones, same configuration and task stream as the run's dense model; "
             "`estimated_cpu_minutes` = that x `full_iterations` (checkpoint writes not "
             "counted); `recorded_seconds`: the time the run itself recorded, on the device "
             "it was trained on. "
             + ("`eval_seconds_per_task`: evaluation of the dense model on the first "
                "`timed_eval_tasks` of the run's fixed test tasks (after a 2-task warm-up); "
                "`estimated_eval_minutes`: that x `test_tasks`. " if args.eval_tasks else "")
             + args.note).strip()
    write_results(RESULTS / args.name, "Dense meta-training time on this CPU", notes, rows)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
