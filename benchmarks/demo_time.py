"""Time ``metaprune demo`` end to end with its defaults and write results/demo.md (+ .csv).

    python benchmarks/demo_time.py [--out /tmp/demo_run] [-- extra demo options]

Runs the installed ``metaprune`` command in a fresh run folder (nothing cached), as a user
would, and records the wall time next to the demo's own table. Run it from a fresh clone
(``git clone . /tmp/ci-check``) on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, write_results  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/metaprune_demo_time")
    p.add_argument("--name", default="demo")
    p.add_argument("--note", default="")
    p.add_argument("demo_args", nargs="*", help="extra options for metaprune demo")
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["metaprune", "demo", "--no-progress", "--out", str(out), *args.demo_args]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rows = []
    for r in json.loads((out / "results.json").read_text()):
        rows.append({"model": r["model"], "sparsity_pct": round(100 * r["sparsity"], 1),
                     "accuracy": round(100 * r["accuracy"], 2),
                     "ci95": round(100 * r["ci95"], 2),
                     "diff_vs_dense": round(100 * r["diff"], 2) if "diff" in r else None,
                     "diff_ci95": round(100 * r["diff_ci95"], 2) if "diff" in r else None,
                     "seconds": round(r["seconds"], 1)})
    notes = (f"`{' '.join(cmd)}` took **{wall:.0f} s** wall time in all ({wall / 60:.1f} "
             "min), process start, data generation and every evaluation included. "
             + args.note)
    write_results(RESULTS / args.name, "metaprune demo (embedded glyphs data), wall time",
                  notes, rows, "\nOutput:\n\n```\n" + run.stdout.strip() + "\n```\n")
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
