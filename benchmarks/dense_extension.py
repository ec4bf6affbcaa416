"""Does a dense model gain from longer meta-training, or does it over-fit its training classes?

Continues one dense run (``metaprune train --extend``) to larger iteration counts, each in its
own folder, and evaluates every model on the config's fixed TEST tasks and on as many fixed
tasks from the TRAINING split (the classes it meta-trained on). A test accuracy that still
climbs says the config is under-trained; a training-split accuracy far above a flat test
accuracy says more training only over-fits (e.g. a reduced dataset).

    python benchmarks/dense_extension.py --config configs/miniimagenet_5w1s_conv4_cpu.yaml \\
        --start runs/ootb_miniimagenet/dense --to 4000,6000 --run-dir runs/mini_extension \\
        --name dense_extension_miniimagenet

Folders ``RUN_DIR/dN`` start as copies of the previous model; a killed run resumes where it
stopped (``train`` resumes, evaluations are cached in each folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, accuracy_columns, cached_evaluation, write_results  # noqa: E402

from metaprune.checkpoint import load_checkpoint, paths  # noqa: E402
from metaprune.evaluation import EvalResult, evaluate, paired_difference  # noqa: E402
from metaprune.experiment import load_split, test_tasks  # noqa: E402
from metaprune.training import last_iteration  # noqa: E402


def extend(config: str, sets: list[str], source: Path, folder: Path, iterations: int,
           tasks: int | None, workers: int | None, log: Path) -> None:
    """``folder``'s model: ``source``'s model meta-trained on to ``iterations`` (nothing to do
    when ``folder`` holds it already, evaluated)."""
    done = last_iteration(folder / "model")
    if done == iterations and (folder / "eval_test.json").exists():
        return
    if done is None:  # the json last: it names the weights' digest
        folder.mkdir(parents=True, exist_ok=True)
        for src in paths(source / "model"):
            tmp = folder / (Path(src).name + ".copying")
            shutil.copy2(src, tmp)
            os.replace(tmp, folder / Path(src).name)
    cmd = [sys.executable, "-m", "metaprune", "train", "--config", config, "--out", str(folder),
           "--extend", "--no-progress"]
    # the start's overrides first: the later --set wins
    cmd += [a for s in sets for a in ("--set", s)] + ["--set", f"train.iterations={iterations}"]
    cmd += ["--eval-tasks", str(tasks)] if tasks else []
    cmd += ["--workers", str(workers)] if workers else []
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text().splitlines()[-5:]
        raise SystemExit(f"train --extend into '{folder}' failed:\n" + "\n".join(tail))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the config that trained --start")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="the --set overrides that trained --start (repeatable)")
    ap.add_argument("--start", required=True, help="a finished `metaprune train` folder")
    ap.add_argument("--to", required=True, help="comma-separated iteration counts, increasing")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--tasks", type=int, default=None, help="fixed tasks per split "
                    "(default: the config's eval.tasks)")
    ap.add_argument("--workers", type=int, default=None, help="train --workers (default: its)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    targets = [int(x) for x in args.to.split(",")]
    if targets != sorted(set(targets)):
        raise SystemExit(f"--to must increase, got {args.to}")
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    folders = [Path(args.start)]
    for n in targets:
        extend(args.config, args.set, folders[-1], run_dir / f"d{n}", n, args.tasks,
               args.workers, run_dir / "commands.log")
        folders.append(run_dir / f"d{n}")

    cfg = load_checkpoint(folders[0] / "model", with_optimizer=False).meta["config"]
    splits = {"test": cfg["data"]["test_split"], "train": cfg["data"]["train_split"]}
    data = {k: load_split({**cfg["data"], "test_split": s}, "test_split")
            for k, s in splits.items()}
    tasks = {k: test_tasks(cfg, data[k], args.tasks, s) for k, s in splits.items()}
    rows, previous = [], None
    for folder in folders:
        c = load_checkpoint(folder / "model", with_optimizer=False)
        res = {}
        for k in splits:
            # `train` evaluated the test tasks already (the start folder's may be other ones)
            own = folder / "eval_test.json"
            cached = EvalResult.load(own) if k == "test" and own.exists() else None
            res[k] = cached if cached is not None and cached.matches(tasks[k], c.learner) else \
                cached_evaluation(folder / f"extension_{k}.json", tasks[k], c.learner,
                                  lambda lr, k=k: evaluate(lr, data[k], tasks[k],
                                                           progress=not args.no_progress))
        iterations = int(c.meta["iteration"])
        test, train = accuracy_columns(res["test"]), accuracy_columns(res["train"])
        row = {"model": str(folder), "iterations": iterations,
               "tasks_seen": iterations * int(cfg["train"]["meta_batch"]),
               "train_seconds": round(float(c.meta.get("train_seconds", 0.0))),
               "test_accuracy": test["accuracy"], "test_ci95": test["ci95"],
               "train_split_accuracy": train["accuracy"], "train_split_ci95": train["ci95"],
               "train_minus_test": round(100 * (res["train"].accuracy - res["test"].accuracy),
                                         2)}
        if previous is not None:  # (the first row has no gain: its cells stay empty)
            gain = paired_difference(res["test"], previous)
            row["test_gain"], row["test_gain_ci95"] = (round(100 * gain.mean, 2),
                                                       round(100 * gain.ci95, 2))
        rows.append(row)
        previous = res["test"]
    d = cfg["data"]
    notes = (f"Dense {cfg['learner']['name']} on {d['dataset']} {d['n_way']}-way "
             f"{d['k_shot']}-shot (`{args.config}`), meta-trained on from `{args.start}` with "
             "`metaprune train --extend` (equal to training that long at once). Each model on "
             f"{len(tasks['test'])} fixed tasks of the test split and as many of the training "
             "split (its own classes, other random episodes). `test_gain`: paired difference "
             "in points to the row above on the same test tasks. `train_seconds`: the "
             "checkpoint's meta-training time, all invocations summed. Commands and output: "
             f"`{run_dir / 'commands.log'}` (not committed).")
    write_results(RESULTS / args.name, "Dense model against longer meta-training", notes, rows)


if __name__ == "__main__":
    main()
