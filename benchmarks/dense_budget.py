"""Dense MAML accuracy against its meta-training budget, from committed results only.

Why the shipped CPU configs stay below the published MAML numbers: this collects every
committed dense Conv4-64 MAML model on full Omniglot (its accuracy on 600 fixed test tasks and
the tasks it was meta-trained on, read from each results file's own header) and sets it
against the published budget (Finn et al. 2017: 60,000 iterations, meta-batch 32 for 5-way and
16 for 20-way). Nothing is trained here.

    python benchmarks/dense_budget.py
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, dense_row, file_at_commit, write_results  # noqa: E402

# (results stem, n_way, how the dense row was made)
SOURCES = [
    ("sparsity_A", 5, "H100"), ("sparsity_A_d900_enddense_ps5", 5, "H100 + CPU"),
    ("sparsity_A_d2700_enddense_ps5", 5, "H100 + CPU"),
    ("ootb_omniglot5", 5, "CPU, 1000 iterations"), ("ootb_omniglot5_cpu", 5, "CPU, shipped config"),
    ("sparsity_B", 20, "H100"), ("sparsity_B_d900_enddense_r100", 20, "H100 + CPU"),
    ("ootb_omniglot20_w64", 20, "CPU, 3 inner steps"),
    ("ootb_omniglot20_cpu", 20, "CPU, shipped config"),
]
PUBLISHED = {5: (98.7, 60000 * 32), 20: (95.8, 60000 * 16)}  # accuracy, tasks seen


def tasks_seen(header: str, base: dict[str, int]) -> int:
    """Meta-training tasks of the dense model, from the results file's header text; ``base``
    holds the budgets of the settings' own dense models (for continuations of them)."""
    from_named = re.search(r"\((\d+) iterations x (\d+) tasks\) meta-trained (\d+) more "
                           r"iterations x (\d+) tasks", header)
    if from_named:
        a, b, c, d = map(int, from_named.groups())
        return a * b + c * d
    from_own = re.search(r"Setting (\w+):.*that setting's dense model meta-trained (\d+) more "
                         r"iterations x (\d+) tasks", header)
    if from_own:
        return base[from_own[1]] + int(from_own[2]) * int(from_own[3])
    plain = re.search(r"Setting (\w+):.*Dense: (\d+) iterations x (\d+) tasks", header)
    if plain:
        base.setdefault(plain[1], int(plain[2]) * int(plain[3]))
        return int(plain[2]) * int(plain[3])
    raise ValueError("no meta-training budget found in the header")


def ootb_budget(md: str) -> tuple[int, int]:
    """Iterations and meta-batch of an out-of-the-box run: from the config file it names, as
    committed at the run's commit (the config may have changed since)."""
    config = re.search(r"--config (\S+)", md)[1]
    commit = re.search(r"git commit ([0-9a-f]{7,})", md)[1]
    text = file_at_commit(commit, config)
    if text is None:
        raise ValueError(f"git has no {config} at commit {commit}")
    m = re.search(r"iterations: (\d+), meta_batch: (\d+)", text)
    return int(m[1]), int(m[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="dense_budget")
    ap.add_argument("--out-dir", default=str(RESULTS), help="where the results files go (the "
                    "committed results they are made from are read from benchmarks/results)")
    args = ap.parse_args()
    rows = []
    base: dict[str, int] = {}
    for stem, n_way, made in SOURCES:
        md = (RESULTS / f"{stem}.md").read_text()
        r = dense_row(stem)
        if stem.startswith("ootb_"):
            iterations, meta_batch = ootb_budget(md)
            seen = iterations * meta_batch
        else:
            seen = tasks_seen(md, base)
        acc, published_tasks = PUBLISHED[n_way]
        rows.append({"source": f"[{stem}]({stem}.md)", "n_way": n_way, "trained_on": made,
                     "tasks_seen": seen, "accuracy": float(r["accuracy"]),
                     "ci95": float(r["ci95"]), "published": acc,
                     "gap_to_published": round(acc - float(r["accuracy"]), 2),
                     "published_tasks_x": round(published_tasks / seen, 1)})
    slopes = []
    for n_way in PUBLISHED:
        pts = sorted((r["tasks_seen"], r["accuracy"]) for r in rows
                     if r["n_way"] == n_way and r["trained_on"].startswith("H100"))
        (t0, a0), (t1, a1) = pts[0], pts[-1]
        per_doubling = (a1 - a0) / math.log2(t1 / t0)
        slopes.append(f"- {n_way}-way, the H100 model and its continuations ({len(pts)} points): "
                      f"{per_doubling:+.2f} points per doubling of the tasks seen, from "
                      f"{t0} to {t1} tasks; the published model saw "
                      f"{PUBLISHED[n_way][1] / t1:.0f}x the largest of them.")
    notes = ("Dense Conv4-64 MAML on full Omniglot, 600 fixed test tasks each (their own "
             "results files hold the test tasks and CIs). `tasks_seen` = meta-training "
             "iterations x meta-batch, read from each file's header (continuations add the "
             "model they started from); `published_tasks_x` = the published budget (60,000 "
             "iterations x 32 tasks for 5-way, x 16 for 20-way) over `tasks_seen`. Rows from "
             "different runs differ in more than the budget (inner steps, meta-batch, test "
             "tasks): the trend within one model's continuations is the measured part.")
    write_results(Path(args.out_dir) / args.name,
                  "Dense MAML accuracy against the meta-training budget", notes, rows,
                  tail="\nAccuracy gained per doubling of the budget:\n\n"
                  + "\n".join(slopes) + "\n")


if __name__ == "__main__":
    main()
