"""Does adaptation's peak memory follow the activations? The models of a device report, their
activation bytes next to the peak memory that report measured.

Adaptation keeps every layer's output for the backward pass, so its peak memory should scale
with the activations, which scale with the channel widths, while the weights scale with their
products. This counts, for each model of a committed device report, the bytes of every leaf
module's output in one forward pass of a support batch (float32), and sets the ratios to the
first model beside the report's measured ``adapt_peak_rss_kb``.

    python benchmarks/activation_memory.py --report device_report_structured_D_reduced \\
        --support 25 --name activation_memory_structured_D
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _report import RESULTS, write_results  # noqa: E402

from metaprune.checkpoint import load_checkpoint  # noqa: E402
from metaprune.pruning.structured import activation_bytes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", required=True,
                    help="a device report's results stem (its CSV names the checkpoints)")
    ap.add_argument("--support", type=int, default=25,
                    help="images in the support batch (the report's memory probe: 5-way 5-shot)")
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    with open(RESULTS / f"{args.report}.csv", newline="") as f:
        report = list(csv.DictReader(f))
    rows = []
    for r in report:
        c = load_checkpoint(r["checkpoint"], with_optimizer=False)
        model = c.learner.model
        shape = getattr(model, "config", {})  # what the registry built the model for
        if "in_channels" not in shape or "image_size" not in shape:
            raise SystemExit(f"{r['checkpoint']}: the model records no input size")
        batch = torch.rand(args.support, shape["in_channels"], shape["image_size"],
                           shape["image_size"], generator=torch.Generator().manual_seed(0))
        rows.append({"model": r["model"],
                     "params": sum(p.numel() for p in model.parameters()),
                     "activation_kib": round(activation_bytes(model, batch) / 1024),
                     "adapt_peak_rss_kib": round(float(r["adapt_peak_rss_kb"]))})
    first = rows[0]
    for row in rows:
        for key, out in (("params", "params_vs_first"), ("activation_kib", "activations_vs_first"),
                         ("adapt_peak_rss_kib", "peak_vs_first")):
            row[out] = round(row[key] / first[key], 2)
    notes = (f"Models and measured peaks: [{args.report}.md]({args.report}.md) "
             f"(`adapt_peak_rss_kb`). `activation_kib`: float32 bytes of every leaf module's "
             f"output in one forward pass of {args.support} images, what adaptation keeps for "
             "its backward pass (in-place operations aside). Ratios are to the first model.")
    write_results(RESULTS / args.name, "Adaptation peak memory against activation size",
                  notes, rows)


if __name__ == "__main__":
    main()
