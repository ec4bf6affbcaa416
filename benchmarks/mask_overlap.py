"""Where do two criteria disagree? Per-layer overlap of the kept weights of two methods.

For one round of a ``sparsity_curve.py`` run, compares the masks of a reference method (anp)
with every other method's, layer by layer: the fraction of the reference's kept weights that
the other method keeps too (1.0: the same mask), the output units (conv channels, class
logits) left with no weight at all, and the L2 norm of each layer's weights.

    python benchmarks/mask_overlap.py --run-dir runs/sparsity_A --round 9 --name mask_overlap_A
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _report import RESULTS, write_results

from metaprune.checkpoint import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--round", type=int, required=True)
    ap.add_argument("--reference", default="anp")
    ap.add_argument("--methods", help="methods to compare with the reference (default: every "
                    "method folder with that round)")
    ap.add_argument("--name", required=True, help="results file stem")
    ap.add_argument("--results-dir", default=str(RESULTS))
    args = ap.parse_args()
    run = Path(args.run_dir)
    ckpt = f"round{args.round:02d}"
    if not (run / args.reference / f"{ckpt}.json").exists():
        raise SystemExit(f"{run / args.reference / ckpt}: no such checkpoint")
    methods = (args.methods.split(",") if args.methods else
               sorted(p.name for p in run.iterdir() if (p / f"{ckpt}.json").exists()))
    if args.reference not in methods:  # --methods names the others; the reference comes first
        methods.insert(0, args.reference)
    learners = {m: load_checkpoint(run / m / ckpt, with_optimizer=False).learner
                for m in methods}
    ref = learners[args.reference]
    rows = []
    for layer, ref_mask in ref.masks.items():
        kept = ref_mask.bool()
        for method, lrn in learners.items():
            if layer not in lrn.masks:
                raise SystemExit(f"{run / method / ckpt}: no mask for {layer}")
            other = lrn.masks[layer].bool()
            weight = dict(lrn.model.named_parameters())[layer].detach()
            rows.append({
                "layer": layer, "method": method, "weights": kept.numel(),
                "kept": int(other.sum()), "outputs": other.shape[0],
                "dead_outputs": int((~other.reshape(other.shape[0], -1).any(dim=1)).sum()),
                f"overlap_with_{args.reference}": round(
                    float((kept & other).sum()) / max(int(kept.sum()), 1), 3),
                "weight_norm": round(float(weight.norm()), 3)})
    notes = (f"Masks of `{run}/<method>/{ckpt}` (after the round's re-meta-training). "
             f"`overlap_with_{args.reference}`: fraction of {args.reference}'s kept weights "
             "that the method keeps too; `dead_outputs`: output units (of `outputs`) with every "
             "weight pruned (a dead class logit keeps only its bias); `weight_norm`: L2 norm of "
             "the layer's weights.")
    write_results(Path(args.results_dir) / args.name, f"Mask overlap: {args.name}", notes, rows)
    print(f"wrote {args.name}.csv/.md ({len(rows)} rows)")


if __name__ == "__main__":
    main()
