"""Channel widths under a memory budget: what ``--memory-budget`` allocates, and what it costs.

For a model spec and each weight sparsity, the uniform widths (the same keep fraction
``sqrt(1 - sparsity)`` in every channel group) next to the widths ``allocate_widths`` picks for
each memory budget; each row's weights and activations are counted on the physically slimmed
model (Conv2d/Linear weights and biases; :func:`activation_bytes` of a support batch), as
fractions of the full model's. No training: widths, not accuracy.

    python benchmarks/memory_budget.py --model resnet12 --widths 16,32,64,128 --image-size 28 \\
        --in-channels 1 --support 5 --budgets 0.5,0.4 --name memory_budget_resnet12_D
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _report import RESULTS, write_results  # noqa: E402

from metaprune.models import build_model  # noqa: E402
from metaprune.pruning.structured import (  # noqa: E402
    ChannelPlan,
    WidthCosts,
    activation_bytes,
    allocate_widths,
    layer_weight_count,
    slim_model,
)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet12")
    ap.add_argument("--widths", default="16,32,64,128", help="the model's stage widths")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--support", type=int, default=5, help="images in the support batch")
    ap.add_argument("--sparsities", default="0.5,0.7,0.85")
    ap.add_argument("--budgets", default="0.5,0.4")
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model, n_way=5, in_channels=args.in_channels,
                        widths=[int(w) for w in args.widths.split(",")],
                        image_size=args.image_size)
    batch = torch.rand(args.support, args.in_channels, args.image_size, args.image_size,
                       generator=torch.Generator().manual_seed(0))
    cost = WidthCosts.measure(model, batch[:2])
    weights0, acts0 = cost.weights(cost.full), activation_bytes(model, batch)
    rows = []
    for sparsity in floats(args.sparsities):
        keep = (1 - sparsity) ** 0.5
        for budget in [None, *floats(args.budgets)]:
            t0 = time.perf_counter()
            try:
                widths = allocate_widths(model, batch[:2], keep, budget)
            except ValueError as e:
                rows.append({"sparsity": sparsity, "memory_budget": budget, "widths": str(e)})
                continue
            seconds = time.perf_counter() - t0
            slim, _ = slim_model(model, ChannelPlan([list(range(w)) for w in widths],
                                                    example=batch[:2]))
            weights = layer_weight_count(slim)
            rows.append({"sparsity": sparsity, "memory_budget": budget or "",
                         "widths": " ".join(map(str, widths)),
                         "weights_vs_full": round(weights / weights0, 3),
                         "activations_vs_full": round(activation_bytes(slim, batch) / acts0, 3),
                         "allocate_seconds": round(seconds, 1)})
    notes = (f"Model `{args.model}` (widths {args.widths}, {args.in_channels} x "
             f"{args.image_size} x {args.image_size} input), untrained: widths do not depend "
             f"on the weights. Channel groups in module order (a ResNet-12 block: conv1, conv2, "
             "conv3 with its shortcut). `weights_vs_full`: Conv2d/Linear weights and biases of "
             f"the slimmed model; `activations_vs_full`: bytes of every leaf module's output for "
             f"{args.support} support images, what adaptation keeps for its backward pass "
             "(adaptation's measured peak memory followed this ratio within 0.01 on setting D: "
             "activation_memory_structured_D.md). Empty `memory_budget`: the uniform widths "
             "(`--keep` = sqrt(1 - sparsity) in every group, today's default). "
             "`allocate_seconds`: the allocation's time (tracing and slimming included).")
    write_results(RESULTS / args.name, "Channel widths under a memory budget", notes, rows)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
