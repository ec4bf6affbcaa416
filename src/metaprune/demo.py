"""``metaprune demo``: the whole pipeline on the embedded glyphs data, in a few minutes on CPU.

Meta-train a dense Conv4 with MAML, prune it with each requested criterion (iterative schedule
with masked re-meta-training), evaluate every model on the SAME fixed test tasks, and print
accuracy with 95% CI and the paired difference to the dense model. Re-running with the same
``--out`` reuses finished stages (and resumes unfinished ones).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, read_meta
from .config import config_diff, load_config, validate_config
from .distributed import barrier, is_main, same_on_all_ranks
from .evaluation import EvalResult, evaluate, paired_difference
from .experiment import load_split, make_learner, test_tasks, train_sampler
from .io import atomic_write_text
from .masks import dense_masks, prunable_weights, sparsity_table
from .training import last_iteration, meta_train

# tasks per re-training iteration of the demo's pruning runs (its smallest meta-batch)
DEMO_RETRAIN_META_BATCH = 4


def demo_config(args: argparse.Namespace) -> dict:
    return load_config(None, [
        "data.dataset=glyphs", "data.n_way=5", "data.k_shot=1", "data.q_query=15",
        "model.name=conv4", f"model.kwargs={{width: {args.width}}}",
        "learner.name=maml", "learner.inner_lr=0.4", "learner.inner_steps=1",
        "learner.eval_inner_steps=3", f"train.iterations={args.iterations}",
        "train.meta_batch=8", "train.checkpoint_every=100", f"eval.tasks={args.tasks}"])


def pruned_share(learner) -> float:
    """Share of the weights of every Conv2d/Linear layer, excluded layers included, that the
    learner's masks remove (sparsity_table's prunable row, excluded layers counted dense)."""
    masks = {**dense_masks(learner.model, prunable_weights(learner.model)), **learner.masks}
    return sparsity_table(learner.model, masks)[-2]["sparsity"]


def _evaluate_cached(learner, dataset, tasks, path: Path, device, desc: str,
                     progress: bool) -> EvalResult:
    cached = path.exists() and EvalResult.load(path).matches(tasks, learner)
    if same_on_all_ranks(int(cached), f"whether '{path}' holds this evaluation"):
        return EvalResult.load(path)
    res = evaluate(learner, dataset, tasks, device=device, progress=progress, desc=desc)
    if is_main():
        res.save(path)
    barrier()
    return res


def run_demo(args: argparse.Namespace, device: torch.device) -> int:
    from .pruning import prune

    out = Path(args.out)
    cfg = demo_config(args)
    progress = not args.no_progress
    t_start = time.perf_counter()
    dense_ck = out / "dense" / "model"
    if last_iteration(dense_ck):  # before anything is written into --out
        diff = config_diff(validate_config(read_meta(dense_ck)["config"]), cfg)
        if diff:
            raise ValueError(f"'{out}' holds a demo run made with other settings "
                             f"({'; '.join(diff[:6])}): use another --out")
    print("generating the glyphs dataset (embedded, procedural) ...", flush=True)
    train_data = load_split(cfg["data"], "train_split")
    test_data = load_split(cfg["data"], "test_split")
    tasks = test_tasks(cfg, test_data)
    if is_main():
        tasks.save(out / "test_tasks.json")
    sampler = train_sampler(cfg, train_data)

    done = last_iteration(dense_ck) or 0
    learner = (load_checkpoint(dense_ck, device=device).learner if done
               else make_learner(cfg, train_data, device))
    t0 = time.perf_counter()
    meta_train(learner, sampler, cfg["train"]["iterations"], cfg["train"]["meta_batch"],
               start_iteration=done, checkpoint_path=dense_ck,
               checkpoint_every=cfg["train"]["checkpoint_every"],
               meta={"config": cfg, "data": cfg["data"], "kind": "dense"}, device=device,
               progress=progress, desc="dense meta-training")
    timings = {"dense": time.perf_counter() - t0}
    results = {"dense": _evaluate_cached(learner, test_data, tasks, out / "dense" / "eval.json",
                                         device, "evaluate dense", progress)}
    sparsity = {"dense": 0.0}

    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        pruned = load_checkpoint(dense_ck, device=device).learner
        t0 = time.perf_counter()
        prune(pruned, sampler, method=method, sparsity=args.sparsity, schedule="default",
              retrain_iters=args.retrain_iters, meta_batch=DEMO_RETRAIN_META_BATCH, tasks=20,
              include_first=not args.exclude_first, include_last=not args.exclude_last,
              out_dir=out / method, meta={"config": cfg, "data": cfg["data"]}, device=device,
              progress=progress)
        timings[method] = time.perf_counter() - t0
        sparsity[method] = pruned_share(pruned)
        results[method] = _evaluate_cached(pruned, test_data, tasks, out / method / "eval.json",
                                           device, f"evaluate {method}", progress)

    rows = []
    for name, res in results.items():
        row = {"model": name, "sparsity": sparsity[name], "accuracy": res.accuracy,
               "ci95": res.ci95, "seconds": timings[name]}
        if name != "dense":
            d = paired_difference(res, results["dense"])
            row.update(diff=d.mean, diff_ci95=d.ci95)
        rows.append(row)
    n_params = sparsity_table(learner.model, {})[-1]["total"]
    lines = [f"metaprune demo: glyphs 5-way 1-shot, Conv4-{args.width} ({n_params} parameters), "
             f"MAML; {len(tasks)} fixed test tasks, {results['dense'].steps} adaptation steps",
             "",
             f"{'model':<12} {'sparsity':>9} {'accuracy (95% CI)':>20} "
             f"{'paired diff vs dense':>22} {'time':>7}"]
    for r in rows:
        diff = (f"{100 * r['diff']:+.2f} +- {100 * r['diff_ci95']:.2f}" if "diff" in r else "")
        lines.append(f"{r['model']:<12} {100 * r['sparsity']:>8.1f}% "
                     f"{100 * r['accuracy']:>11.2f} +- {100 * r['ci95']:.2f} {diff:>22} "
                     f"{r['seconds']:>6.0f}s")
    lines.append("")
    lines.append(f"sparsity = pruned share of all Conv2d/Linear weights; total wall "
                 f"time {time.perf_counter() - t_start:.0f}s; results in {out}/")
    table = "\n".join(lines)
    if is_main():
        atomic_write_text(out / "results.json", json.dumps(rows, indent=2))
        atomic_write_text(out / "results.txt", table + "\n")
    print()
    print(table)
    return 0
