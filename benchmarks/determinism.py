"""Is dense meta-training bit-exact on this machine? The same setting trained several times:
again with the same torch thread count, killed half-way and resumed from its checkpoint, and
with another thread count; each final set of weights compared with the first.

    python benchmarks/determinism.py --setting E-fomaml --iterations 30 --name determinism
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import torch
from _report import RESULTS, write_results
from sparsity_curve import SETTINGS

from metaprune.checkpoint import load_checkpoint
from metaprune.config import load_config
from metaprune.experiment import load_split, make_learner, train_sampler
from metaprune.learners import Learner
from metaprune.training import meta_train


def _weights(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


def _digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(weights[k].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setting", default="E-fomaml", choices=sorted(SETTINGS))
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--meta-batch", type=int, default=8)
    ap.add_argument("--threads", default="1,2", help="thread counts: the first is the reference")
    ap.add_argument("--name", default="determinism")
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--set", action="append", default=[],
                    help="extra config override (tests/test_benchmarks_smoke.py: tiny data)")
    args = ap.parse_args()
    if args.iterations < 2:
        raise SystemExit(f"--iterations must be >= 2 (half of it is the resume point), got "
                         f"{args.iterations}")
    threads = [int(t) for t in args.threads.split(",")]
    cfg = load_config(None, SETTINGS[args.setting]["set"] + [
        f"train.iterations={args.iterations}", f"train.meta_batch={args.meta_batch}",
        *args.set])
    data = load_split(cfg["data"], "train_split")
    sampler = train_sampler(cfg, data)
    n, half = args.iterations, args.iterations // 2

    def train(n_threads: int, resume: bool) -> dict[str, torch.Tensor]:
        before = torch.get_num_threads()
        torch.set_num_threads(n_threads)
        try:
            return _train(resume)
        finally:
            torch.set_num_threads(before)

    def _train(resume: bool) -> dict[str, torch.Tensor]:
        learner = make_learner(cfg, data, "cpu")
        if not resume:
            meta_train(learner, sampler, n, args.meta_batch, progress=False)
            return _weights(learner)
        with tempfile.TemporaryDirectory() as tmp:
            ck = Path(tmp) / "dense"
            meta_train(learner, sampler, half, args.meta_batch, progress=False,
                       checkpoint_path=ck, checkpoint_every=half)
            learner = load_checkpoint(ck).learner  # a new process would start from here
            meta_train(learner, sampler, n, args.meta_batch, start_iteration=half,
                       progress=False)
        return _weights(learner)

    runs = [(threads[0], False, "reference"), (threads[0], False, "again"),
            (threads[0], True, f"killed after {half}, resumed")]
    runs += [(t, False, "other thread count") for t in threads[1:]]
    rows, ref = [], None
    for n_threads, resume, what in runs:
        w = train(n_threads, resume)
        if ref is None:
            ref = w
        diff = max((w[k].double() - ref[k].double()).abs().max().item() for k in ref)
        rows.append({"run": what, "torch_threads": n_threads, "weights_sha256": _digest(w),
                     "bit_equal_to_reference": all(torch.equal(w[k], ref[k]) for k in ref),
                     "max_abs_diff": f"{diff:.3g}"})
        print(rows[-1], flush=True)
    write_results(Path(args.results_dir) / args.name,
                  f"Determinism of dense meta-training: setting {args.setting}",
                  f"{n} iterations of {args.meta_batch} tasks of setting {args.setting} "
                  f"({cfg['learner']['name']}, {cfg['model']}) on the CPU, trained in one "
                  "process per row; each row's final weights compared with the reference "
                  "row's (bit for bit, and the largest absolute difference).", rows)


if __name__ == "__main__":
    main()
