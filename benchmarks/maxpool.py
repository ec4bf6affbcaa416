"""2x2 max-pooling on CPU: nn.MaxPool2d's kernel vs two strided element-wise maxima.

    python benchmarks/maxpool.py [--threads 1] [--name maxpool]

For the activation shapes of Conv4 and ResNet-12 (support and query batches), times the
forward pass without autograd (evaluation's query pass) and forward + backward under
autograd (training), and checks that the values are identical. Sets the thresholds of
``metaprune.models.layers.MaxPool2``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, write_results  # noqa: E402

from metaprune.models.layers import max_pool2_values  # noqa: E402

SHAPES = [(5, 32, 28, 28), (5, 32, 14, 14), (5, 32, 7, 7), (75, 32, 28, 28), (75, 32, 14, 14),
          (75, 32, 7, 7), (300, 32, 28, 28), (75, 64, 28, 28), (5, 64, 84, 84),
          (75, 160, 21, 21)]


def seconds(fn, budget: float = 0.5) -> float:
    """Mean time of fn, repeated for about ``budget`` seconds after a warm-up."""
    for _ in range(3):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def measure(shape: tuple[int, ...], budget: float = 0.5) -> dict:
    ceil = shape[-1] % 2 == 1 and shape[-1] > 7  # ResNet-12's odd maps pool with ceil_mode
    x = torch.randn(*shape).relu()
    if not torch.equal(F.max_pool2d(x, 2, ceil_mode=ceil), max_pool2_values(x, ceil)):
        raise SystemExit(f"values differ for {shape}")
    with torch.no_grad():
        nn_ng = seconds(lambda: F.max_pool2d(x, 2, ceil_mode=ceil), budget)
        fast_ng = seconds(lambda: max_pool2_values(x, ceil), budget)
    xg = x.clone().requires_grad_()
    g = torch.randn(F.max_pool2d(x, 2, ceil_mode=ceil).shape)
    nn_g = seconds(lambda: torch.autograd.grad(F.max_pool2d(xg, 2, ceil_mode=ceil), xg, g),
                   budget)
    fast_g = seconds(lambda: torch.autograd.grad(max_pool2_values(xg, ceil), xg, g), budget)
    return {"shape": "x".join(map(str, shape)), "ceil_mode": ceil, "elements": x.numel(),
            "no_grad_nn_us": round(1e6 * nn_ng), "no_grad_maxima_us": round(1e6 * fast_ng),
            "no_grad_speedup": round(nn_ng / fast_ng, 2),
            "grad_nn_us": round(1e6 * nn_g), "grad_maxima_us": round(1e6 * fast_g),
            "grad_speedup": round(nn_g / fast_g, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="maxpool")
    p.add_argument("--shapes", type=int, default=len(SHAPES), help="the first N shapes only")
    p.add_argument("--budget", type=float, default=0.5, help="timed seconds per measurement")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for shape in SHAPES[: args.shapes]:
        rows.append(measure(shape, args.budget))
        print(rows[-1], flush=True)
    notes = (f"{args.threads} torch thread(s). `no_grad`: forward only without autograd "
             "(evaluation's query pass); `grad`: forward + backward under autograd "
             "(torch.maximum's own backward). Values are checked identical for every shape. "
             "Speed-up = nn.MaxPool2d time / strided-maxima time.")
    write_results(RESULTS / args.name, "2x2 max-pooling on CPU (benchmarks/maxpool.py)",
                  notes, rows)


if __name__ == "__main__":
    main()
