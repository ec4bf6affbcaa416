"""What a new user gets: a shipped config and the CLI defaults, run as the README says.

    python benchmarks/out_of_the_box.py --config configs/omniglot_5w1s_cpu.yaml \\
        --run-dir runs/ootb_omniglot5 --name ootb_omniglot5 [--paper] [--also OPTIONS]

Runs ``metaprune train``, ``metaprune prune`` (anp, then magnitude; ``--paper`` adds anp under
``--preset paper``; ``--also '--retrain-iters 200'`` adds anp with those options) at 85%
with every other option at its default, and ``metaprune evaluate``
of each final model on the config's fixed test tasks (600), then writes the accuracies, the
paired differences against the dense model and against magnitude, and the wall time of every
command to results/NAME.md (+ .csv). ``--dense-only`` stops after the dense model (the
config's accuracy and meta-training time). Each command is resumable: a killed run, started again
with the same arguments, reuses what is done.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, write_results  # noqa: E402

from metaprune.checkpoint import load_checkpoint, read_meta  # noqa: E402
from metaprune.data.tasks import TaskList  # noqa: E402
from metaprune.evaluation import EvalResult, paired_difference  # noqa: E402


def run(cmd: list[str], log: Path) -> None:
    """Run a metaprune command (stdout+stderr appended to ``log``)."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)


def work_seconds(run_dir: Path) -> float:
    """The compute time a run's own records hold, summed over every invocation that worked on
    it (a killed and resumed run included): meta-training (the checkpoint's ``train_seconds``)
    or every pruning round (``round_seconds`` in state.json: scoring, compensation, masks,
    re-training, checkpoints)."""
    state = run_dir / "state.json"
    if state.exists():
        return sum(r["round_seconds"] for r in json.loads(state.read_text())["rounds"])
    return float(read_meta(run_dir / "model")["train_seconds"])


def slug(label: str) -> str:
    """A file name for a row label: 'anp, --preset paper' -> 'anp_paper', 'anp, --max-drop
    1 (chose 85.0%)' -> 'anp_maxdrop1'."""
    base = (label.split(" (")[0].replace(", --preset ", "_").replace(", --max-drop ",
                                                                      "_maxdrop"))
    return re.sub(r"[^A-Za-z0-9.]+", "_", base).strip("_")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--sparsity", default="0.85")
    p.add_argument("--paper", action="store_true", help="also anp under --preset paper")
    p.add_argument("--max-drop", type=float, default=None,
                   help="also anp with --max-drop POINTS (sparsity up to 0.95): the round it "
                   "chooses on validation tasks is evaluated on the test tasks")
    p.add_argument("--also", action="append", default=[], metavar="OPTIONS",
                   help="also anp with these prune options, e.g. '--retrain-iters 200' "
                   "(repeatable)")
    p.add_argument("--prune-options", default="",
                   help="options added to every prune command, e.g. '--retrain-iters 1' "
                   "(tests/test_benchmarks_smoke.py: a tiny run)")
    p.add_argument("--skip-baselines", action="store_true",
                   help="leave out the default anp and magnitude rows: dense and the rows "
                   "--paper / --max-drop / --also ask for")
    p.add_argument("--dense-only", action="store_true",
                   help="only the dense model: the config's test accuracy and meta-training "
                   "time (benchmarks/shipped_configs.py reads them)")
    args = p.parse_args()
    extra = args.paper or args.max_drop is not None or bool(args.also)
    if args.dense_only and (extra or args.skip_baselines):
        p.error("--dense-only runs no pruning: drop --paper, --max-drop, --also and "
                "--skip-baselines")
    if args.skip_baselines and not extra:
        p.error("--skip-baselines leaves only dense: add --paper, --max-drop or --also "
                "(or ask for --dense-only)")
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "commands.log"
    dense = run_dir / "dense"
    run(["metaprune", "train", "--config", args.config, "--out", str(dense), "--no-progress"],
        log)
    jobs = [] if args.skip_baselines or args.dense_only else [("anp", ["--method", "anp"]),
                                           ("magnitude", ["--method", "magnitude"])]
    if args.paper:
        jobs.append(("anp, --preset paper", ["--method", "anp", "--preset", "paper"]))
    if args.max_drop is not None:
        jobs.append((f"anp, --max-drop {args.max_drop:g}",
                     ["--method", "anp", "--max-drop", f"{args.max_drop:g}"]))
    jobs += [(f"anp, {opts}", ["--method", "anp", *opts.split()]) for opts in args.also]
    evals = {"dense": dense / "model"}
    dirs = {"dense": dense}
    results: dict[str, EvalResult] = {}
    tasks = TaskList.load(dense / "test_tasks.json")  # written by `train`, as `evaluate` draws
    notes = (f"Config `{args.config}`, CLI defaults (`--preset recommended` unless the row "
             f"says otherwise), sparsity {args.sparsity} of the pruned layers' weights; paired "
             "differences in points on the config's fixed test tasks. `work_seconds`: the "
             "meta-training time its checkpoint records (dense) or the sum of every pruning "
             "round's time in the run's state.json (validation and test evaluations not "
             "included), with the default worker processes on this machine, summed over "
             "every invocation if a run was killed and resumed. Commands and their "
             f"output: `{log}` (not committed).")

    def report(pending: list[str]) -> None:
        """Evaluates the finished models not evaluated yet and writes the results so far, so
        a run stopped before its last job keeps the rows it finished."""
        for label, ck in evals.items():
            if label in results:
                continue
            save = run_dir / f"test_{slug(label)}.json"
            # a resumed --max-drop run may choose another round: a cached result must be this
            # model's, on the dense run's test tasks
            learner = load_checkpoint(ck).learner
            if not save.exists() or not EvalResult.load(save).matches(tasks, learner):
                run(["metaprune", "evaluate", str(ck), "--save", str(save), "--no-progress"],
                    log)
            results[label] = EvalResult.load(save)
        rows = []
        for label, res in results.items():
            row = {"model": label, "accuracy": round(100 * res.accuracy, 2),
                   "ci95": round(100 * res.ci95, 2), "tasks": int(res.accuracies.size)}
            if label != "dense":
                d = paired_difference(res, results["dense"])
                row.update(diff_vs_dense=round(100 * d.mean, 2),
                           diff_ci95=round(100 * d.ci95, 2))
                if label != "magnitude" and "magnitude" in results:
                    m = paired_difference(res, results["magnitude"])
                    row.update(diff_vs_magnitude=round(100 * m.mean, 2),
                               vs_magnitude_ci95=round(100 * m.ci95, 2))
                row["checkpoint"] = str(evals[label])
            row["work_seconds"] = round(work_seconds(dirs[label]))
            rows.append(row)
        unfinished = (f" Not run to the end yet: {', '.join(pending)}." if pending else "")
        write_results(RESULTS / args.name, f"Out of the box: {args.config}", notes + unfinished,
                      rows)

    report([label for label, _ in jobs])
    for i, (label, opts) in enumerate(jobs):
        out = run_dir / slug(label)
        sparsity = [] if "--max-drop" in opts else ["--sparsity", args.sparsity]
        run(["metaprune", "prune", str(dense / "model"), *opts, *sparsity,
             *args.prune_options.split(), "--out", str(out), "--no-progress"], log)
        pending = [later for later, _ in jobs[i + 1:]]
        if "--max-drop" in opts:  # the round chosen on validation tasks
            best = json.loads((out / "validation.json").read_text())["best"]
            if best is None:
                report(pending)
                continue
            label = f"{label} (chose {100 * best['sparsity']:.1f}%)"
            evals[label] = Path(best["checkpoint"])
        else:
            state = json.loads((out / "state.json").read_text())
            evals[label] = Path(state["rounds"][-1]["checkpoint"])
        dirs[label] = out
        report(pending)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
