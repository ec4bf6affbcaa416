"""Paired per-task differences ANP minus each baseline, from a sparsity_curve.py run folder.

    python benchmarks/paired_vs_anp.py --setting A      # reads runs/sparsity_A/

``--compare LABEL=DIR`` adds a method folder of another run on the same test tasks (e.g. a
replicate with another seed, or an ablation) as one more row group. ``--reference METHOD``
pairs against another method of the run than anp (e.g. anp-structured, whose evaluations are
``eval_sNN.json`` per target instead of ``eval_roundNN.json`` per round); the baselines are the
run's methods of the same kind, plus any ``--compare``. ``--control LABEL=FILE`` adds one
evaluation file (e.g. a dense model given as much extra meta-training as the pruned ones had,
from extra_retrain.py) that every target of the reference is paired against.
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
    ap.add_argument("--control", action="append", default=[], metavar="LABEL=FILE",
                    help="one evaluation file paired against every target of the reference")
    ap.add_argument("--reference", default="anp",
                    help="the run's method every other one is paired against (default anp)")
    args = ap.parse_args()
    run = Path(args.run_dir or f"runs/sparsity_{args.setting}")
    ref = run / args.reference
    if not evaluations(ref):
        raise SystemExit(f"{ref}: no evaluations of --reference {args.reference}")
    # the run's other methods of the same kind (pruning rounds, or structured targets)
    kind = (ref / "state.json").exists()
    bases = {p.name: p for p in sorted(run.iterdir()) if p.is_dir() and p != ref
             and (p / "state.json").exists() == kind and evaluations(p)}
    for item in args.compare:
        label, sep, folder = item.partition("=")
        if not sep or not evaluations(Path(folder)):
            raise SystemExit(f"--compare expects LABEL=DIR with evaluations in DIR, got '{item}'")
        bases[label] = Path(folder)
    ref_evals = evaluations(ref)
    sources: dict[str, dict[float, Path]] = {b: evaluations(f) for b, f in bases.items()}
    for item in args.control:
        label, sep, file = item.partition("=")
        if not sep or not Path(file).is_file():
            raise SystemExit(f"--control expects LABEL=FILE with an evaluation file, got '{item}'")
        sources[label] = dict.fromkeys(ref_evals, Path(file))
    rows = []
    for base, base_evals in sources.items():
        for target in sorted(set(ref_evals) & set(base_evals)):
            d = paired_difference(EvalResult.load(ref_evals[target]),
                                  EvalResult.load(base_evals[target]))
            rows.append({"setting": args.setting, "baseline": base, "sparsity": target,
                         "anp_minus_baseline": round(100 * d.mean, 2),
                         "ci95": round(100 * d.ci95, 2), "tasks": d.tasks})
    if not rows:
        raise SystemExit(f"no paired evaluations found in {run}")
    controls = [item.partition("=")[2] for item in args.control]
    name = args.name or f"sparsity_{args.setting}"
    # never overwrite the curve's own <name>.csv
    suffix = "_anp_vs_baselines" if args.reference == "anp" else f"_{args.reference}_vs_baselines"
    stem = Path(args.results_dir) / (name if name.endswith(suffix) else name + suffix)
    label = "ANP" if args.reference == "anp" else args.reference
    extra = "" if args.reference == "anp" else (
        f" The column `anp_minus_baseline` holds {args.reference} minus the baseline.")
    write_results(stem, f"Setting {args.setting}: {label} minus each baseline (paired, points)",
                  f"Per-task differences on the same fixed test tasks, from the evaluation "
                  f"files of {ref} and of "
                  f"{', '.join([str(f) for f in bases.values()] + controls)} (see "
                  f"the runs' results files for their commands). Positive: {label} better."
                  + extra, rows)
    print(markdown_table(rows))


def evaluations(folder: Path) -> dict[float, Path]:
    """Evaluation files of a method folder by sparsity target: ``eval_roundNN.json`` of a
    pruning run (targets from its state.json) and ``eval_sNN.json`` (target NN%)."""
    out: dict[float, Path] = {}
    state = folder / "state.json"
    if state.exists():
        for rnd, target in enumerate(json.loads(state.read_text())["targets"], start=1):
            path = folder / f"eval_round{rnd:02d}.json"
            if path.exists():
                out[round(float(target), 4)] = path
    for path in folder.glob("eval_s[0-9][0-9].json"):
        out[round(int(path.stem[len("eval_s"):]) / 100, 4)] = path
    return out


if __name__ == "__main__":
    main()
