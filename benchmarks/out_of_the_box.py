"""What a new user gets: a shipped config and the CLI defaults, run as the README says.

    python benchmarks/out_of_the_box.py --config configs/omniglot_5w1s_conv4_cpu.yaml \\
        --run-dir runs/ootb_omniglot5 --name ootb_omniglot5 [--paper] [--also OPTIONS]

Runs ``metaprune train``, ``metaprune prune`` (anp, then magnitude; ``--paper`` adds anp under
``--preset paper``; ``--also '--retrain-iters 200'`` adds anp with those options) at 85%
with every other option at its default, and ``metaprune evaluate``
of each final model on the config's fixed test tasks (600), then writes the accuracies, the
paired differences against the dense model and against magnitude, and the wall time of every
command to results/NAME.md (+ .csv). Each command is resumable: a killed run, started again
with the same arguments, reuses what is done.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, write_results  # noqa: E402

from metaprune.checkpoint import load_checkpoint  # noqa: E402
from metaprune.evaluation import EvalResult, paired_difference  # noqa: E402


def run(cmd: list[str], log: Path) -> float:
    """Run a metaprune command (stdout+stderr appended to ``log``); returns wall seconds."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


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
    args = p.parse_args()
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "commands.log"
    seconds: dict[str, float] = {}
    dense = run_dir / "dense"
    seconds["train"] = run(["metaprune", "train", "--config", args.config, "--out", str(dense),
                            "--no-progress"], log)
    jobs = [("anp", ["--method", "anp"]), ("magnitude", ["--method", "magnitude"])]
    if args.paper:
        jobs.append(("anp, --preset paper", ["--method", "anp", "--preset", "paper"]))
    if args.max_drop is not None:
        jobs.append((f"anp, --max-drop {args.max_drop:g}",
                     ["--method", "anp", "--max-drop", f"{args.max_drop:g}"]))
    jobs += [(f"anp, {opts}", ["--method", "anp", *opts.split()]) for opts in args.also]
    evals = {"dense": dense / "model"}
    for label, opts in jobs:
        out = run_dir / slug(label)
        sparsity = [] if "--max-drop" in opts else ["--sparsity", args.sparsity]
        seconds[label] = run(["metaprune", "prune", str(dense / "model"), *opts, *sparsity,
                              *args.prune_options.split(), "--out", str(out), "--no-progress"],
                             log)
        if "--max-drop" in opts:  # the round chosen on validation tasks
            best = json.loads((out / "validation.json").read_text())["best"]
            if best is None:
                continue
            evals[f"{label} (chose {100 * best['sparsity']:.1f}%)"] = Path(best["checkpoint"])
        else:
            state = json.loads((out / "state.json").read_text())
            evals[label] = Path(state["rounds"][-1]["checkpoint"])
    # a command run again only resumes: keep the time of the run that did the work
    times_path = run_dir / "seconds.json"
    before = json.loads(times_path.read_text()) if times_path.exists() else {}
    seconds = {k: max(v, before.get(k, 0.0)) for k, v in {**before, **seconds}.items()}
    times_path.write_text(json.dumps(seconds, indent=2))
    results: dict[str, EvalResult] = {}
    for label, ck in evals.items():
        save = run_dir / f"test_{slug(label)}.json"
        # a resumed --max-drop run may choose another round: a cached result must be this model's
        digest = load_checkpoint(ck).learner.digest()
        if not save.exists() or EvalResult.load(save).meta.get("model_digest") != digest:
            run(["metaprune", "evaluate", str(ck), "--save", str(save), "--no-progress"], log)
        results[label] = EvalResult.load(save)
    rows = []
    for label, res in results.items():
        row = {"model": label, "accuracy": round(100 * res.accuracy, 2),
               "ci95": round(100 * res.ci95, 2), "tasks": int(res.accuracies.size)}
        if label != "dense":
            d = paired_difference(res, results["dense"])
            row.update(diff_vs_dense=round(100 * d.mean, 2), diff_ci95=round(100 * d.ci95, 2))
            if label != "magnitude":
                m = paired_difference(res, results["magnitude"])
                row.update(diff_vs_magnitude=round(100 * m.mean, 2),
                           vs_magnitude_ci95=round(100 * m.ci95, 2))
            row["checkpoint"] = str(evals[label])
        command = "train" if label == "dense" else label.split(" (chose")[0]
        row["command_seconds"] = round(seconds.get(command, 0))
        rows.append(row)
    notes = (f"Config `{args.config}`, CLI defaults (`--preset recommended` unless the row "
             f"says otherwise), sparsity {args.sparsity} of the pruned layers' weights; paired "
             "differences in points on the config's fixed test tasks. `command_seconds`: wall "
             "time of `metaprune train` (dense) or `metaprune prune` (its evaluation not "
             "included), with the default worker processes on this machine. Commands and their "
             f"output: `{log}` (not committed).")
    write_results(RESULTS / args.name, f"Out of the box: {args.config}", notes, rows)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
