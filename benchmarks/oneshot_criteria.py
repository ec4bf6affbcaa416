"""Criterion quality without re-training: one-shot pruning of a finished dense model.

Each variant prunes the SAME dense checkpoint once (no re-meta-training) to each sparsity and
is evaluated on the same fixed test tasks (paired with the dense model). This separates how
well a criterion ranks weights from how well masked re-meta-training repairs the damage, which
is what the iterative curves of ``sparsity_curve.py`` mix together.

    OMP_NUM_THREADS=1 METAPRUNE_DATA=../shared/data python benchmarks/oneshot_criteria.py \\
        --run-dir runs/sparsity_A --name oneshot_A

Variants are ``method[:option=value,...]`` with the PruneConfig options of anp/lobs
(damping, h_data, compensation, patch_stride, obs_weights, bn_aware) and ``score_tasks`` (how
many tasks feed the criterion; default ``--score-tasks``). Results are cached per variant in
RUN/oneshot/ so a killed run resumes; a non-default ``--score-tasks`` is part of the cache key.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _report import RESULTS, accuracy_columns, cached_evaluation, write_results

from metaprune.checkpoint import load_checkpoint
from metaprune.config import parse_key_value
from metaprune.data.tasks import TaskList
from metaprune.evaluation import EvalResult, evaluate, paired_difference
from metaprune.experiment import load_split, train_sampler
from metaprune.pruning import DEFAULT_PATCH_STRIDE, prune

DEFAULT_SCORE_TASKS = 20
DEFAULT_VARIANTS = [
    "magnitude", "lobs", "anp", "lobs:compensation=none", "anp:compensation=none",
    "anp:damping=0.01", "lobs:damping=0.01", "anp:h_data=support", "taylor-meta-fo",
]


def parse_variant(text: str) -> tuple[str, dict]:
    method, _, opts = text.partition(":")
    out = dict(parse_key_value(kv, f"variant '{text}' option")
               for kv in filter(None, opts.split(",")))
    unknown = set(out) - {"damping", "patch_stride", "h_data", "compensation", "obs_weights",
                          "bn_aware", "score_tasks"}
    if unknown:
        raise ValueError(f"variant '{text}': unknown option(s) {sorted(unknown)}")
    return method, out


def variant_key(variant: str, sparsity: float, score_tasks: int) -> str:
    """Cache file stem of one variant at one sparsity (the default task count is left out)."""
    key = f"{variant.replace(':', '_').replace('=', '-').replace(',', '_')}_s{sparsity:g}"
    return key if score_tasks == DEFAULT_SCORE_TASKS else f"{key}_t{score_tasks}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, help="a sparsity_curve run dir (dense + tasks)")
    ap.add_argument("--name", required=True, help="results file stem")
    ap.add_argument("--sparsity", default="0.3,0.5,0.7")
    ap.add_argument("--variants", default=";".join(DEFAULT_VARIANTS),
                    help="';'-separated method[:k=v,...]")
    ap.add_argument("--tasks", type=int, default=300, help="first N of the run's test tasks")
    ap.add_argument("--score-tasks", type=int, default=DEFAULT_SCORE_TASKS,
                    help="tasks that feed each criterion (a variant's score_tasks overrides it)")
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    run = Path(args.run_dir)
    dense_ck = load_checkpoint(run / "dense")
    cfg = dense_ck.meta["config"]
    all_tasks = TaskList.load(run / "test_tasks.json")
    tasks = TaskList(all_tasks.specs[: args.tasks]) if args.tasks < len(all_tasks) else all_tasks
    test_data = load_split(cfg["data"], "test_split")
    sampler = train_sampler(cfg, load_split(cfg["data"], "train_split"))
    cache = run / "oneshot"
    cache.mkdir(exist_ok=True)
    progress = not args.no_progress

    def cached(key: str, make) -> EvalResult:
        return cached_evaluation(cache / f"{key}.json", tasks, make(), lambda lrn: evaluate(
            lrn, test_data, tasks, progress=progress, desc=key))

    dense = cached("dense", lambda: load_checkpoint(run / "dense").learner)
    rows = [_row("dense", 0.0, dense, None)]
    plain: dict[tuple[str, float], EvalResult] = {}  # each method without options
    for variant in args.variants.split(";"):
        method, opts = parse_variant(variant)
        for s in map(float, args.sparsity.split(",")):
            key = variant_key(variant, s, args.score_tasks)

            def make(method=method, opts=opts, s=s):
                opts = dict(opts)
                n_tasks = int(opts.pop("score_tasks", args.score_tasks))
                lrn = load_checkpoint(run / "dense").learner
                prune(lrn, sampler, method=method, sparsity=s, schedule="one-shot",
                      retrain_iters=0, tasks=n_tasks, progress=False, **opts)
                return lrn

            res = cached(key, make)
            if not opts:
                plain[(method, s)] = res
            rows.append(_row(variant, s, res, paired_difference(res, dense)))
            if opts and (method, s) in plain:
                d = paired_difference(res, plain[(method, s)])
                rows[-1].update(diff_vs_method=round(100 * d.mean, 2),
                                diff_vs_method_ci95=round(100 * d.ci95, 2))
            print(json.dumps(rows[-1]), flush=True)
        _write(args, cfg, rows, tasks)


def _row(variant: str, s: float, res: EvalResult, diff) -> dict:
    return {"variant": variant, "sparsity": s, **accuracy_columns(res, diff)}


def _write(args, cfg, rows: list[dict], tasks: TaskList) -> None:
    d = cfg["data"]
    notes = (f"One-shot pruning of the dense model in `{args.run_dir}/dense` (no re-training), "
             f"{args.score_tasks} scoring tasks and conv patch stride {DEFAULT_PATCH_STRIDE} "
             "(the library's default) unless the variant sets score_tasks or patch_stride, "
             f"evaluated on the first {len(tasks)} of its "
             f"fixed test tasks (fingerprint {tasks.fingerprint()}). Data: {d['dataset']} "
             f"{d['n_way']}-way {d['k_shot']}-shot ({d['train_split']} -> {d['test_split']}); "
             f"learner {cfg['learner']['name']}, model {cfg['model']}. Layer-wise allocation "
             "(same ratio in every prunable layer). `diff_vs_dense`: paired per-task "
             "difference (points) with its 95% CI; `diff_vs_method`: the same, against the "
             "method with its default options at the same sparsity (variants with options "
             "only).")
    write_results(Path(args.results_dir) / args.name,
                  f"One-shot criterion quality: {args.name}", notes, rows)


if __name__ == "__main__":
    main()
