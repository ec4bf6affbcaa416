"""Accuracy vs sparsity: ANP against every baseline, one command per setting, resumable.

1. meta-train the dense model once (reused if its checkpoint is finished),
2. prune it with each method (same schedule, same re-meta-training budget),
3. evaluate dense and every method after the rounds that reach 50/70/85/90/95% sparsity on the
   SAME fixed test tasks (paired),
4. write benchmarks/results/sparsity_<setting>.{csv,md,png}.

Every stage caches its output in --run-dir, so re-running the same command after a kill
continues where it stopped.

    METAPRUNE_DATA=../shared/data nohup python benchmarks/sparsity_curve.py --setting A &
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _report import RESULTS, accuracy_columns, cached_evaluation, write_results

from metaprune.argtypes import POSITIVE, real
from metaprune.checkpoint import load_checkpoint, paths, read_meta
from metaprune.config import load_config, parse_key_value
from metaprune.evaluation import EvalResult, evaluate, paired_difference
from metaprune.experiment import load_split, make_learner, test_tasks, train_sampler
from metaprune.io import atomic_write, atomic_write_text, with_extension
from metaprune.masks import prunable_weights
from metaprune.pruning import prune
from metaprune.pruning.structured import STRUCTURED_METHODS
from metaprune.training import last_iteration, meta_train

ALL_METHODS = ["anp", "lobs", "magnitude", "random", "taylor-meta", "taylor-meta-fo"]
# optional (--methods ...,anp-structured): whole channels removed, see _structured
STRUCTURED = "anp-structured"  # channel criteria: STRUCTURED_METHODS (anp, l1, random)
# control for the structured methods: anp-structured's final widths, trained from scratch
SCRATCH = "scratch-structured"
# cumulative sparsity after each round: 10%, ..., 80%, 85%, 90%, 95%
SCHEDULE = [0.1] * 8 + [0.05, 0.05, 0.05]
REPORT_AT = [0.5, 0.7, 0.85, 0.9, 0.95]

OMNI = ["data.dataset=omniglot", "data.options={image_size: 28, rotations: true}",
        "data.train_split=background", "data.test_split=test", "model.name=conv4"]
SETTINGS: dict[str, dict] = {
    "A": {"title": "Omniglot 5-way 1-shot, Conv4, MAML",
          "set": OMNI + ["data.n_way=5", "data.k_shot=1", "data.q_query=15",
                         "model.kwargs={width: 64}", "learner.name=maml",
                         "learner.inner_lr=0.4", "learner.inner_steps=1",
                         "learner.eval_inner_steps=3", "train.meta_batch=16"],
          "iterations": 3000, "retrain_iters": 100, "methods": ALL_METHODS},
    "B": {"title": "Omniglot 20-way 1-shot, Conv4, MAML",
          "set": OMNI + ["data.n_way=20", "data.k_shot=1", "data.q_query=5",
                         "eval.q_query=15", "model.kwargs={width: 64}", "learner.name=maml",
                         "learner.inner_lr=0.1", "learner.inner_steps=2",
                         "learner.eval_inner_steps=5", "train.meta_batch=8"],
          "iterations": 3000, "retrain_iters": 100, "methods": ALL_METHODS},
    "C": {"title": "mini-ImageNet (reduced) 5-way 1-shot, Conv4-32, MAML, 42 px",
          "set": ["data.dataset=miniimagenet", "data.options={image_size: 42}",
                  "data.n_way=5", "data.k_shot=1", "data.q_query=15", "model.name=conv4",
                  "model.kwargs={width: 32}", "learner.name=maml", "learner.inner_lr=0.01",
                  "learner.inner_steps=5", "learner.eval_inner_steps=10",
                  "train.meta_batch=4"],
          "iterations": 3000, "retrain_iters": 100, "methods": ALL_METHODS},
    "D": {"title": "Omniglot 5-way 1-shot, ResNet-12 (16-32-64-128), MAML",
          "set": OMNI[:-1] + ["data.n_way=5", "data.k_shot=1", "data.q_query=15",
                              "model.name=resnet12", "model.kwargs={widths: [16, 32, 64, 128]}",
                              "learner.name=maml", "learner.inner_lr=0.4",
                              "learner.inner_steps=1", "learner.eval_inner_steps=3",
                              "train.meta_batch=16"],
          "iterations": 2000, "retrain_iters": 100, "methods": ["anp", "magnitude"],
          "report_at": [0.85]},
}
for _learner, _extra in [("fomaml", []), ("reptile", ["learner.inner_lr=0.1",
                                                      "learner.inner_steps=5",
                                                      "learner.eval_inner_steps=10"]),
                         ("protonet", [])]:
    SETTINGS[f"E-{_learner}"] = {
        "title": f"Omniglot 5-way 1-shot, Conv4, {_learner}",
        "set": SETTINGS["A"]["set"] + [f"learner.name={_learner}"] + _extra,
        "iterations": 3000, "retrain_iters": 100, "methods": ["anp", "magnitude"],
        "report_at": [0.85]}
# CAVIA (issue 21): only a 100-number context adapts; lr 1.0 and 2 inner steps in training and
# at test, CAVIA's defaults (Zintgraf et al.)
SETTINGS["E-cavia"] = {
    "title": "Omniglot 5-way 1-shot, Conv4, cavia",
    "set": SETTINGS["A"]["set"] + ["learner.name=cavia", "learner.inner_lr=1.0",
                                   "learner.inner_steps=2", "learner.eval_inner_steps=2"],
    "iterations": 3000, "retrain_iters": 100, "methods": ["anp", "magnitude", "lobs"],
    "report_at": [0.85]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setting", required=True, choices=sorted(SETTINGS))
    ap.add_argument("--run-dir", help="default: runs/sparsity_<setting>")
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iterations", type=int, help="dense meta-training iterations")
    ap.add_argument("--dense-from", help="start from this finished dense checkpoint (path "
                    "without suffix, e.g. RUN/extra/dense_round09_it900): copied to RUN/dense; "
                    "its recorded iterations replace --iterations")
    ap.add_argument("--retrain-iters", type=int, help="re-meta-training iterations per round")
    ap.add_argument("--methods", help="comma-separated subset of the setting's methods; "
                    f"{', '.join(STRUCTURED_METHODS)} and {SCRATCH} (after {STRUCTURED}) "
                    "may be added to any setting; 'none': the dense model only (e.g. a dense "
                    "control meta-trained as long as the pruned models)")
    ap.add_argument("--tasks", type=int, default=600, help="fixed test tasks")
    ap.add_argument("--score-tasks", type=int, default=20, help="scoring tasks per round")
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    ap.add_argument("--patch-stride", type=int, default=None,
                    help="anp/lobs conv patch stride (default: the library's)")
    ap.add_argument("--report-at", help="comma-separated sparsities to evaluate (default: the "
                    "setting's); the schedule stops at the largest")
    ap.add_argument("--schedule", help="comma-separated per-round increments (default: 8 x 0.1 "
                    "then 3 x 0.05); --report-at must name cumulative targets it reaches")
    ap.add_argument("--pruning", action="append", default=[],
                    help="extra prune() option for every method, e.g. damping=0.01")
    ap.add_argument("--name", help="results file stem (default: sparsity_<setting>)")
    ap.add_argument("--note", default="", help="extra sentence for the results file")
    ap.add_argument("--memory-budget", type=real(0, 1, low_open=True), default=None,
                    help="structured methods: channel widths within this fraction of the dense "
                    "model's activations (metaprune prune --memory-budget); their models and the "
                    "scratch control are cached in folders named with it")
    ap.add_argument("--round-to", type=POSITIVE, default=None, metavar="N",
                    help="structured methods: channel widths in multiples of N (metaprune "
                    "prune --round-to); cached in folders named with it")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    setting = SETTINGS[args.setting]
    iterations = args.iterations or setting["iterations"]
    retrain = setting["retrain_iters"] if args.retrain_iters is None else args.retrain_iters
    methods = ([] if args.methods == "none" else
               args.methods.split(",") if args.methods else setting["methods"])
    report_at = ([float(x) for x in args.report_at.split(",")] if args.report_at
                 else setting.get("report_at", REPORT_AT))
    extra = args.extra = dict(parse_key_value(kv, "--pruning") for kv in args.pruning)
    full = [float(x) for x in args.schedule.split(",")] if args.schedule else SCHEDULE
    missing = [t for t in report_at if all(abs(t - c) > 1e-6 for c in _cumulative(full))]
    if missing:
        raise SystemExit(f"--report-at {missing}: not reached by the schedule {full} "
                         f"(cumulative {_cumulative(full)})")
    schedule = full[: 1 + max(i for i, t in enumerate(_cumulative(full))
                              if t <= max(report_at) + 1e-9)]
    run = Path(args.run_dir or f"runs/sparsity_{args.setting}")
    cfg = load_config(None, setting["set"] + [f"train.iterations={iterations}",
                                              f"eval.tasks={args.tasks}"] + args.set)
    progress = not args.no_progress
    timings: dict[str, float] = {}

    # 1. dense model
    train_data = load_split(cfg["data"], "train_split")
    test_data = load_split(cfg["data"], "test_split")
    sampler = train_sampler(cfg, train_data)
    tasks = test_tasks(cfg, test_data)
    tasks.save(run / "test_tasks.json")
    dense_ck = run / "dense"
    if args.dense_from:
        _adopt_dense(Path(args.dense_from), dense_ck)
    done = last_iteration(dense_ck) or 0
    learner = (load_checkpoint(dense_ck, device=args.device).learner if done
               else make_learner(cfg, train_data, args.device))
    if args.memory_budget is not None or args.round_to is not None:  # refused before training
        _check_widths(args, learner.model, methods, report_at, sampler)
    t0 = time.perf_counter()
    if not args.dense_from:  # an adopted checkpoint is used as it is
        meta_train(learner, sampler, iterations, cfg["train"]["meta_batch"],
                   start_iteration=done, checkpoint_path=dense_ck, checkpoint_every=250,
                   meta={"config": cfg, "data": cfg["data"], "kind": "dense"},
                   device=args.device, progress=progress, desc="dense")
    dense_doc = json.loads((run / "dense.json").read_text())
    timings["dense_train"] = dense_doc.get("train_seconds", time.perf_counter() - t0)
    args.dense_meta_batch = dense_doc["config"]["train"]["meta_batch"]
    args.dense_iterations = int(dense_doc["iteration"])
    # torch thread counts per stage, as the checkpoints record them (CPU bit-exactness)
    args.threads_used = ({"dense": dense_doc["torch_threads"]}
                         if dense_doc.get("torch_threads") else {})

    def cached_eval(lrn, path: Path, desc: str) -> EvalResult:
        return cached_evaluation(path, tasks, lrn, lambda lrn: evaluate(
            lrn, test_data, tasks, device=args.device, progress=progress, desc=desc))

    dense = cached_eval(learner, run / "eval_dense.json", "evaluate dense")
    rows = [_row(args.setting, "dense", 0.0, 0.0, dense, None, timings["dense_train"], 0.0)]

    # 2-3. each method: prune (resumable), evaluate the reported rounds
    targets = _cumulative(schedule)
    for method in methods:
        if method == SCRATCH:
            t0 = time.perf_counter()
            rows += _scratch(args, cfg, run, train_data, sampler, schedule, retrain, report_at,
                             dense, _prunable(learner.model), cached_eval)
            timings[method] = time.perf_counter() - t0
            _write(args, setting, cfg, rows, iterations, retrain, schedule)
            continue
        if method in STRUCTURED_METHODS:
            t0 = time.perf_counter()
            rows += _structured(args, cfg, run, dense_ck, sampler, schedule, retrain, report_at,
                                dense, cached_eval, method)
            timings[method] = time.perf_counter() - t0
            _write(args, setting, cfg, rows, iterations, retrain, schedule)
            continue
        pruned = load_checkpoint(dense_ck, device=args.device).learner
        t0 = time.perf_counter()
        rounds = prune(pruned, sampler, method=method, sparsity=targets[-1], schedule=schedule,
                       retrain_iters=retrain, meta_batch=cfg["train"]["meta_batch"],
                       tasks=args.score_tasks,
                       **({} if args.patch_stride is None else
                          {"patch_stride": args.patch_stride}), **extra,
                       out_dir=run / method, meta={"config": cfg, "data": cfg["data"]},
                       device=args.device, progress=progress)
        if rounds and 0 not in (counts := {r.torch_threads for r in rounds}):
            args.threads_used[method] = sorted(counts)  # 0: rounds older than the record
        by_target = {round(r.target, 4): r for r in rounds}
        for target in report_at:
            r = by_target[round(target, 4)]
            ck = load_checkpoint(run / method / f"round{r.round:02d}", device=args.device,
                                 with_optimizer=False)
            res = cached_eval(ck.learner, run / method / f"eval_round{r.round:02d}.json",
                              f"evaluate {method} {target:.0%}")
            prune_s = sum(x.score_seconds + x.retrain_seconds for x in rounds[: r.round])
            rows.append(_row(args.setting, method, target, r.sparsity, res,
                             paired_difference(res, dense), prune_s, r.score_seconds))
        timings[method] = time.perf_counter() - t0
        _write(args, setting, cfg, rows, iterations, retrain, schedule)
    _write(args, setting, cfg, rows, iterations, retrain, schedule)


def _adopt_dense(source: Path, dense_ck: Path) -> None:
    """Copy a finished dense checkpoint to ``dense_ck``, once; a different one already there is
    an error (the run's pruned models and cached evaluations belong to it)."""
    src_st, src_js = paths(source)
    for f in (src_st, src_js):
        if not f.exists():
            raise SystemExit(f"--dense-from {source}: {f} does not exist")
    doc = read_meta(source)
    dst_st, dst_js = paths(dense_ck)
    if dst_js.exists():
        have = read_meta(dense_ck).get("tensors_sha256")
        if have != doc.get("tensors_sha256"):
            raise SystemExit(f"--dense-from {source}: {dst_js} holds a different dense model "
                             "(tensors_sha256 differs); use a new --run-dir")
        return
    dense_ck.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst_st, lambda tmp: shutil.copyfile(src_st, tmp))
    atomic_write_text(dst_js, json.dumps({**doc, "kind": "dense", "adopted_from": str(source)},
                                         indent=2))


def _structured(args, cfg, run: Path, dense_ck: Path, sampler, schedule, retrain, report_at,
                dense: EvalResult, cached_eval, method: str = STRUCTURED) -> list[dict]:
    """Structured ``method`` at each reported sparsity, from the dense model: keep
    sqrt(1 - target) of the channels (about 1 - target of the conv weights remain), in
    min(r, 3) rounds with the SAME total re-meta-training budget as the unstructured run
    (r rounds x retrain) that reaches the target. Cached as RUN/<method>/sNN (+ eval_sNN.json)."""
    from metaprune.checkpoint import save_checkpoint
    from metaprune.pruning.cli import structured_keep
    from metaprune.pruning.structured import structured_anp

    rows = []
    targets = _cumulative(schedule)
    for target in report_at:
        r = 1 + next(i for i, t in enumerate(targets) if abs(t - target) < 1e-6)
        rounds = min(r, 3)
        iters = r * retrain // rounds
        path = method_dir(run, method, args) / f"s{round(100 * target):02d}"
        dense_learner = load_checkpoint(dense_ck, device=args.device).learner
        n_dense = _prunable(dense_learner.model)
        t0 = time.perf_counter()
        if last_iteration(path) is None:
            lrn, plans = structured_anp(
                dense_learner, sampler, keep=structured_keep(target), rounds=rounds,
                retrain_iters=iters, meta_batch=cfg["train"]["meta_batch"],
                tasks=args.score_tasks,
                device=args.device, progress=not args.no_progress,
                channel_criterion=STRUCTURED_METHODS[method], memory=args.memory_budget,
                round_to=args.round_to)
            save_checkpoint(path, lrn, {"config": cfg, "data": cfg["data"], "structured": {
                "method": method, "target": target, "rounds": rounds, "retrain_iters": iters,
                "memory_budget": args.memory_budget, "round_to": args.round_to,
                "widths": [p.widths for p in plans], "seconds": time.perf_counter() - t0}},
                with_optimizer=False)
        ck = load_checkpoint(path, device=args.device, with_optimizer=False)
        seconds = ck.meta["structured"]["seconds"]
        res = cached_eval(ck.learner, path.with_name(f"eval_{path.name}.json"),
                          f"evaluate {method} {target:.0%}")
        sparsity = 1 - _prunable(ck.learner.model) / n_dense
        rows.append(_row(args.setting, method, target, sparsity, res,
                         paired_difference(res, dense), seconds, 0.0))
    return rows


def _check_widths(args: argparse.Namespace, model, methods: list[str],
                  report_at: list[float], sampler) -> None:
    """--memory-budget and --round-to need a structured method and must be reachable at every
    target (the widths do not depend on the weights)."""
    from metaprune.pruning.cli import structured_keep
    from metaprune.pruning.structured import allocate_widths, example_input

    if not any(m in STRUCTURED_METHODS for m in methods):
        raise SystemExit(f"--memory-budget and --round-to apply to the structured methods "
                         f"({', '.join(STRUCTURED_METHODS)}); --methods has none")
    example = example_input(model, sampler.batch(10_000_000, 1))
    for target in report_at:
        try:
            allocate_widths(model, example, structured_keep(target), args.memory_budget,
                            args.round_to)
        except ValueError as e:
            raise SystemExit(f"sparsity {target:g}: {e}") from None


def method_dir(run: Path, method: str, args: argparse.Namespace) -> Path:
    """Where a structured method's (or the scratch control's) models are cached: a memory
    budget and a rounding get folders of their own."""
    budget, multiple = getattr(args, "memory_budget", None), getattr(args, "round_to", None)
    return run / (method + ("" if budget is None else f"-mem{budget:g}")
                  + ("" if multiple is None else f"-r{multiple}"))


def _prunable(model) -> int:
    """Number of prunable (Conv2d / Linear) weights of ``model``."""
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in prunable_weights(model))


def _scratch(args, cfg, run: Path, train_data, sampler, schedule, retrain, report_at,
             dense: EvalResult, n_dense: int, cached_eval) -> list[dict]:
    """Control for structured pruning: at each reported sparsity, the network with the final
    widths of anp-structured, meta-trained from a random initialisation on as many tasks as
    the dense model and the structured run's re-training together (at the dense model's
    meta-batch). ``n_dense``: the dense model's prunable weights. Cached as
    RUN/scratch-structured/sNN (resumable)."""
    import copy
    import math

    dense_iters = args.dense_iterations
    mb = int(args.dense_meta_batch)
    targets = _cumulative(schedule)
    rows = []
    for target in report_at:
        r = 1 + next(i for i, t in enumerate(targets) if abs(t - target) < 1e-6)
        tag = f"s{round(100 * target):02d}"
        src = method_dir(run, STRUCTURED, args) / f"{tag}.json"
        if not src.exists():
            raise SystemExit(f"{SCRATCH} needs {src}: run {STRUCTURED} first")
        doc = json.loads(src.read_text())
        c = copy.deepcopy(cfg)
        slim = doc["model"]["kwargs"].get("slim")
        if slim:  # the dense architecture cut to anp-structured's shapes (any backbone)
            c["model"]["kwargs"] = {**(c["model"].get("kwargs") or {}), "slim": slim}
        else:  # written as a conv4-slim (before slim shapes): one width per block
            c["model"]["kwargs"] = {"widths": doc["structured"]["widths"][-1]}
        c["train"]["meta_batch"] = mb
        iters = dense_iters + math.ceil(r * retrain * cfg["train"]["meta_batch"] / mb)
        path = method_dir(run, SCRATCH, args) / tag
        done = last_iteration(path) or 0
        lrn = (load_checkpoint(path, device=args.device).learner if done
               else make_learner(c, train_data, args.device))
        meta_train(lrn, sampler, iters, mb, start_iteration=done, checkpoint_path=path,
                   checkpoint_every=250, meta={"config": c, "data": c["data"],
                                               "kind": SCRATCH, "target": target},
                   device=args.device, progress=not args.no_progress, desc=f"{SCRATCH} {tag}")
        seconds = read_meta(path).get("train_seconds", 0.0)
        res = cached_eval(lrn, path.with_name(f"eval_{tag}.json"), f"evaluate {SCRATCH} {tag}")
        rows.append(_row(args.setting, SCRATCH, target, 1 - _prunable(lrn.model) / n_dense,
                         res, paired_difference(res, dense), seconds, 0.0))
    return rows


def _cumulative(schedule: list[float]) -> list[float]:
    out, s = [], 0.0
    for inc in schedule:
        s = round(s + inc, 6)
        out.append(s)
    return out


def _row(setting, method, target, sparsity, res: EvalResult, diff, seconds, score_s) -> dict:
    return {"setting": setting, "method": method, "target_sparsity": target,
            "sparsity": round(sparsity, 4), **accuracy_columns(res, diff),
            "seconds_to_reach": round(seconds, 1), "last_score_seconds": round(score_s, 2),
            "eval_seconds": round(float(res.meta.get("eval_seconds", float("nan"))), 1)}


def _write(args, setting, cfg, rows, iterations, retrain, schedule) -> None:
    stem = Path(args.results_dir) / (args.name or f"sparsity_{args.setting}")
    stem.parent.mkdir(parents=True, exist_ok=True)  # the plot is written before the tables
    d = cfg["data"]
    dense_text = (f"the finished checkpoint {args.dense_from} ({args.dense_iterations} "
                  "iterations recorded in it; see the note)" if args.dense_from
                  else f"{iterations} iterations x {args.dense_meta_batch} tasks")
    memory_note = ("" if args.memory_budget is None else
                   f"; structured widths under --memory-budget {args.memory_budget:g}") + (
        "" if args.round_to is None else f"; structured widths in multiples of {args.round_to}")
    notes = (f"Setting {args.setting}: {setting['title']}. Data: {d['dataset']} "
             f"({d['train_split']} -> {d['test_split']}, options {d['options']}) read from "
             f"$METAPRUNE_DATA (shared/data; mini-ImageNet is the REDUCED 100-images-per-class "
             f"copy, not comparable with published numbers). Model {cfg['model']}, learner "
             f"{cfg['learner']}. Dense: {dense_text}. Pruning: per-round increments "
             f"{schedule} (cumulative "
             f"{_cumulative(schedule)}), {retrain} masked "
             f"re-meta-training iterations per round, 20 scoring tasks per round"
             f"{'; pruning options ' + str(args.extra) if args.extra else ''}"
             f"{memory_note}. "
             f"meta-batch {cfg['train']['meta_batch']}, {rows[0]['tasks']} fixed test tasks, "
             f"{d['q_query']} queries per class in training. `diff_vs_dense` is the paired "
             f"per-task difference (points) with its "
             f"95% CI. `seconds_to_reach`: scoring + re-training time up to that round "
             f"(dense row: its meta-training time); `eval_seconds`: time to evaluate that "
             f"row's model. {_threads_text(args.threads_used)}"
             f"{args.note}")
    png = _plot(rows, with_extension(stem, ".png"), setting["title"])
    write_results(stem, f"Accuracy vs sparsity: {setting['title']}", notes, rows,
                  f"\n![accuracy vs sparsity]({png.name})\n" if png else "")


def _threads_text(used: dict[str, list[int]]) -> str:
    """The torch thread counts the run's checkpoints record (CPU results are bit-exact only at
    the same count); empty if none are recorded (runs older than the record)."""
    if not used:
        return ""
    return "Torch threads used: " + ", ".join(f"{k} {v}" for k, v in used.items()) + ". "


def _plot(rows: list[dict], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    dense = rows[0]
    ax.axhline(dense["accuracy"], color="k", ls="--", lw=1, label="dense")
    for method in dict.fromkeys(r["method"] for r in rows[1:]):
        rs = [r for r in rows if r["method"] == method]
        ax.errorbar([100 * r["target_sparsity"] for r in rs], [r["accuracy"] for r in rs],
                    yerr=[r["ci95"] for r in rs], marker="o", capsize=3, label=method)
    ax.set_xlabel("sparsity of prunable weights (%)")
    ax.set_ylabel("meta-test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
