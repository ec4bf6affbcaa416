"""Paired per-task differences ANP minus each baseline, from a sparsity_curve.py run folder.

    python benchmarks/paired_vs_anp.py --setting A      # reads runs/sparsity_A/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _report import RESULTS, header, markdown_table, write_csv

from metaprune.evaluation import EvalResult, paired_difference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setting", required=True)
    ap.add_argument("--run-dir", help="default: runs/sparsity_<setting>")
    ap.add_argument("--results-dir", default=str(RESULTS))
    args = ap.parse_args()
    run = Path(args.run_dir or f"runs/sparsity_{args.setting}")
    targets = json.loads((run / "anp" / "state.json").read_text())["targets"]
    rows = []
    for base in sorted(p.name for p in run.iterdir() if (p / "state.json").exists()):
        if base == "anp":
            continue
        for rnd, target in enumerate(targets, start=1):
            a_path = run / "anp" / f"eval_round{rnd:02d}.json"
            b_path = run / base / f"eval_round{rnd:02d}.json"
            if not (a_path.exists() and b_path.exists()):
                continue
            d = paired_difference(EvalResult.load(a_path), EvalResult.load(b_path))
            rows.append({"setting": args.setting, "baseline": base, "sparsity": target,
                         "anp_minus_baseline": round(100 * d.mean, 2),
                         "ci95": round(100 * d.ci95, 2), "tasks": d.tasks})
    if not rows:
        raise SystemExit(f"no paired evaluations found in {run}")
    out = Path(args.results_dir)
    stem = out / f"sparsity_{args.setting}_anp_vs_baselines"
    write_csv(stem.with_suffix(".csv"), rows)
    md = header(f"Setting {args.setting}: ANP minus each baseline (paired, points)",
                f"Per-task differences on the same fixed test tasks, from the evaluation files "
                f"of {run} (see sparsity_{args.setting}.md for the run's command). Positive: "
                "ANP better.")
    stem.with_suffix(".md").write_text(md + "\n" + markdown_table(rows) + "\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
