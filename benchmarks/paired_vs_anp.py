"""Paired per-task differences ANP minus each baseline, from a sparsity_curve.py run folder.

    python benchmarks/paired_vs_anp.py --setting A      # reads runs/sparsity_A/

``--compare LABEL=DIR`` adds a method folder of another run on the same test tasks (e.g. a
replicate with another seed, or an ablation) as one more row group.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _report import RESULTS, markdown_table, write_results

from metaprune.evaluation import EvalResult, paired_difference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setting", required=True)
    ap.add_argument("--run-dir", help="default: runs/sparsity_<setting>")
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--name", help="the run's results name, e.g. sparsity_A_seed1 (default: "
                    "sparsity_<setting>); writes <name>_anp_vs_baselines.csv/.md")
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR",
                    help="another run's method folder to compare with")
    args = ap.parse_args()
    run = Path(args.run_dir or f"runs/sparsity_{args.setting}")
    targets = json.loads((run / "anp" / "state.json").read_text())["targets"]
    bases = {p.name: p for p in sorted(run.iterdir())
             if (p / "state.json").exists() and p.name != "anp"}
    for item in args.compare:
        label, sep, folder = item.partition("=")
        if not sep or not Path(folder, "state.json").exists():
            raise SystemExit(f"--compare expects LABEL=DIR with DIR/state.json, got '{item}'")
        bases[label] = Path(folder)
    rows = []
    for base, folder in bases.items():
        for rnd, target in enumerate(targets, start=1):
            a_path = run / "anp" / f"eval_round{rnd:02d}.json"
            b_path = folder / f"eval_round{rnd:02d}.json"
            if not (a_path.exists() and b_path.exists()):
                continue
            d = paired_difference(EvalResult.load(a_path), EvalResult.load(b_path))
            rows.append({"setting": args.setting, "baseline": base, "sparsity": target,
                         "anp_minus_baseline": round(100 * d.mean, 2),
                         "ci95": round(100 * d.ci95, 2), "tasks": d.tasks})
    if not rows:
        raise SystemExit(f"no paired evaluations found in {run}")
    name = args.name or f"sparsity_{args.setting}"
    suffix = "_anp_vs_baselines"  # never overwrite the curve's own <name>.csv
    stem = Path(args.results_dir) / (name if name.endswith(suffix) else name + suffix)
    write_results(stem, f"Setting {args.setting}: ANP minus each baseline (paired, points)",
                  f"Per-task differences on the same fixed test tasks, from the evaluation "
                  f"files of {run}/anp and of {', '.join(str(f) for f in bases.values())} (see "
                  "the runs' results files for their commands). Positive: ANP better.", rows)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
