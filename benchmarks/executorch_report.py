"""ExecuTorch report (issue 22): the .pte program of each model next to its .mpz, and the
ExecuTorch runtime against the PyTorch device runtime on the same episodes.

For every model (a checkpoint; exported here to .mpz, then to .pte with ``build_program``):
bytes of the .pte, the .mpz, dense float32 and the information limit; agreement on fixed test
episodes (the same predicted class for every query, both runtimes adapting with the stored
rule and predicting with support-statistics BatchNorm; largest difference of adapted weights
and of logits; each runtime's largest adapted-weight error against the same adaptation run in
float64 by the PyTorch runtime, so that a difference is put next to eager float32's own
rounding; the same weight difference between PyTorch's own two CPU convolution backends,
oneDNN and native, as a yardstick; accuracy of each); adaptation wall time (the rule's k
steps, median) in each runtime at the same thread count; peak memory in fresh processes
(increase of the resident set's high-water mark, VmHWM reset via /proc/self/clear_refs): of
loading the model and adapting once, and of one adaptation after a warm-up.

    python benchmarks/executorch_report.py --model dense=runs/omni/model \\
        --model anp85=runs/omni_anp/round09 --dataset omniglot --option image_size=28 \\
        --option rotations=true [--tasks 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _report
import torch

from metaprune.deploy.executorch_export import DEFAULT_DELEGATE, DELEGATES
from metaprune.io import with_extension

ROOT = Path(__file__).resolve().parent.parent
WEIGHT_TOL = 1e-5  # issue 22's bound on the adapted weights' difference between runtimes


def load_runtime(runtime: str, path: str):
    if runtime == "executorch":
        from metaprune.deploy.executorch_runtime import ExecuTorchModel, set_threads

        set_threads(torch.get_num_threads())
        return ExecuTorchModel.load(path)
    from metaprune.deploy.runtime import DeviceModel

    return DeviceModel.load(path)


def memprobe(runtime: str, path: str, n_way: int, k_shot: int, channels: int,
             size: int) -> dict:
    """In a fresh process: peak memory of loading + one adaptation, and of one adaptation
    after a warm-up (everything imported first, so neither counts the libraries)."""
    if runtime == "executorch":
        import executorch.extension.training  # noqa: F401  (import cost is not the model's)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_way * k_shot, channels, size, size, generator=g)
    y = torch.arange(n_way).repeat_interleave(k_shot)
    gc.collect()
    base = _report.rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")   # reset VmHWM to the current RSS
    model = load_runtime(runtime, path)
    model.adapt(x, y)
    load_adapt = _report.rss_kb("VmHWM") - base
    gc.collect()
    base = _report.rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    model.adapt(x, y)
    return {"load_adapt_kb": load_adapt, "adapt_kb": _report.rss_kb("VmHWM") - base}


def measure(name: str, ckpt: str, args: argparse.Namespace, tmp: Path) -> dict:
    from metaprune.checkpoint import load_checkpoint
    from metaprune.data.registry import get_dataset
    from metaprune.data.tasks import TaskSampler
    from metaprune.deploy.executorch_export import export_executorch, training_network
    from metaprune.deploy.format import mpz_from_learner, save_mpz, size_report

    ck = load_checkpoint(ckpt, with_optimizer=False)
    mpz = save_mpz(tmp / f"{name}.mpz", mpz_from_learner(ck.learner))
    t0 = time.perf_counter()
    pte = export_executorch(mpz, tmp / f"{name}.pte", k_shot=args.k_shot,
                            max_queries=args.n_way * args.queries, delegate=args.delegate)
    export_s = time.perf_counter() - t0
    rep = size_report(mpz)
    dm, em = load_runtime("torch", str(mpz)), load_runtime("executorch", str(pte))
    dm64 = load_runtime("torch", str(mpz))
    dm64.model.double()  # the float64 reference adaptation
    # the exported training method's network (im2col convolutions, ...) adapted by the PyTorch
    # runtime in float32: the formulation's own rounding, apart from ExecuTorch's kernels
    dmx = load_runtime("torch", str(mpz))
    dmx.model = training_network(dmx)
    # only a gradient rule adapts the model's weights (the float64 columns are theirs)
    gradient_rule = dm.rule["kind"] == "gradient"
    ds = get_dataset(args.dataset, args.split, args.root, **args.options)
    sampler = TaskSampler(ds, args.n_way, args.k_shot, args.queries, seed=args.seed)
    same_tasks = same_queries = queries = 0
    max_w = max_logit = err_t = err_e = err_x = max_b = 0.0
    over_e = over_b = 0  # episodes whose adapted weights differ by more than WEIGHT_TOL
    acc_t, acc_e = [], []
    for i in range(args.tasks):
        t = sampler.task(i)
        a, b = dm.adapt(t.support_x, t.support_y), em.adapt(t.support_x, t.support_y)
        ref = dm64.adapt(t.support_x.double(), t.support_y)
        exported = dmx.adapt(t.support_x, t.support_y) if gradient_rule else a  # unused
        with torch.backends.mkldnn.flags(enabled=False):  # PyTorch's other convolution
            native = dm.adapt(t.support_x, t.support_y)
        ep_w = ep_b = 0.0
        for n, p in b.params.items():
            ep_w = max(ep_w, (p - a.params[n]).abs().max().item())
            ep_b = max(ep_b, (native.params[n] - a.params[n]).abs().max().item())
            err_t = max(err_t, (a.params[n].double() - ref.params[n]).abs().max().item())
            err_e = max(err_e, (p.double() - ref.params[n]).abs().max().item())
            err_x = max(err_x, (exported.params[n].double() - ref.params[n]).abs().max().item())
            keep = dm.masks.get(n)
            if keep is not None and not bool((p[~keep] == 0).all()):
                raise AssertionError(f"{name}: a pruned weight of {n} moved in ExecuTorch")
        max_w, max_b = max(max_w, ep_w), max(max_b, ep_b)
        over_e, over_b = over_e + (ep_w > WEIGHT_TOL), over_b + (ep_b > WEIGHT_TOL)
        la, lb = a.logits(t.query_x), b.logits(t.query_x)
        pa, pb = la.argmax(1), lb.argmax(1)
        max_logit = max(max_logit, (la - lb).abs().max().item())
        same_tasks += bool(torch.equal(pa, pb))
        same_queries += int((pa == pb).sum())
        queries += len(pa)
        acc_t.append((pa == t.query_y).float().mean().item())
        acc_e.append((pb == t.query_y).float().mean().item())
    t = sampler.task(0)

    # the runtimes take turns, run by run, so that a shared machine's load slows both alike
    fns = [lambda: dm.adapt(t.support_x, t.support_y), lambda: em.adapt(t.support_x, t.support_y),
           lambda: a.logits(t.query_x), lambda: b.logits(t.query_x)]
    times: list[list[float]] = [[] for _ in fns]
    for i in range(2 + args.reps):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            if i >= 2:  # two warm-up rounds
                ts.append(time.perf_counter() - t0)
    ms_t, ms_e, pred_t, pred_e = (1000 * statistics.median(ts) for ts in times)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MALLOC_MMAP_THRESHOLD_": "65536",
           "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": str(args.threads)}
    mem = {}
    for runtime, path in (("torch", mpz), ("executorch", pte)):
        probes = []
        for _ in range(args.mem_reps):
            out = subprocess.run([sys.executable, __file__, "--memprobe", runtime, str(path),
                                  "--n-way", str(args.n_way), "--k-shot", str(args.k_shot),
                                  "--threads", str(args.threads), "--channels",
                                  str(dm.channels), "--size", str(dm.size)],
                                 capture_output=True, text=True, timeout=600, env=env)
            if out.returncode:
                raise RuntimeError(f"memory probe failed ({name}, {runtime}): "
                                   f"{out.stderr[-2000:]}")
            probes.append(json.loads(out.stdout.strip().splitlines()[-1]))
        mem[runtime] = {k: statistics.median(p[k] for p in probes) for k in probes[0]}
    n = args.tasks
    return {"model": name, "checkpoint": ckpt, "learner": dm.rule["learner"],
            "steps": dm.rule["steps"], "delegate": args.delegate,
            "pte_bytes": pte.stat().st_size,
            "mpz_bytes": rep.compact_bytes, "dense_bytes": rep.dense_bytes,
            "limit_bytes": rep.limit_bytes, "export_s": round(export_s, 1),
            "tasks": n, "tasks_same_classes": same_tasks,
            "queries_same_class": f"{same_queries}/{queries}",
            "max_weight_diff": f"{max_w:.1e}", "tasks_weight_diff_over_tol": over_e,
            "max_weight_diff_torch_backends": f"{max_b:.1e}",
            "tasks_weight_diff_over_tol_torch_backends": over_b,
            "max_logit_diff": f"{max_logit:.1e}",
            **({"weight_err_f64_torch": f"{err_t:.1e}",
                "weight_err_f64_executorch": f"{err_e:.1e}",
                "weight_err_f64_exported_eager": f"{err_x:.1e}"}
               if gradient_rule
               else {"weight_err_f64_torch": None, "weight_err_f64_executorch": None,
                     "weight_err_f64_exported_eager": None}),
            "acc_torch": round(100 * statistics.mean(acc_t), 2),
            "acc_executorch": round(100 * statistics.mean(acc_e), 2),
            "adapt_ms_torch": round(ms_t, 1), "adapt_ms_executorch": round(ms_e, 1),
            "adapt_time_ratio": round(ms_e / ms_t, 2),
            "predict_ms_torch": round(pred_t, 1), "predict_ms_executorch": round(pred_e, 1),
            "predict_time_ratio": round(pred_e / pred_t, 2),
            "load_adapt_peak_kib_torch": mem["torch"]["load_adapt_kb"],
            "load_adapt_peak_kib_executorch": mem["executorch"]["load_adapt_kb"],
            "adapt_peak_kib_torch": mem["torch"]["adapt_kb"],
            "adapt_peak_kib_executorch": mem["executorch"]["adapt_kb"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _report.add_model_and_episode_options(ap, dataset="omniglot")
    ap.add_argument("--n-way", type=int, default=5)
    ap.add_argument("--k-shot", type=int, default=1)
    ap.add_argument("--queries", type=int, default=15, help="query images per class")
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--seed", type=int, default=12345, help="task seed (the eval seed)")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions")
    ap.add_argument("--mem-reps", type=int, default=3, help="memory probes per runtime")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--delegate", choices=DELEGATES, default=DEFAULT_DELEGATE,
                    help="export-executorch --delegate")
    ap.add_argument("--out", default=str(_report.RESULTS / "executorch_report"))
    ap.add_argument("--note", default="", help="extra sentence for the results file")
    ap.add_argument("--memprobe", nargs=2, metavar=("RUNTIME", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--channels", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=28, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memprobe:
        print(json.dumps(memprobe(*args.memprobe, args.n_way, args.k_shot, args.channels,
                                  args.size)))
        return 0
    if not args.model:
        ap.error("give at least one --model NAME=CHECKPOINT")
    from metaprune.config import parse_key_value

    args.options = dict(parse_key_value(o, "--option") for o in args.option)
    rows = _report.measure_models(args.model, measure, args)
    import executorch.version

    notes = (f"- {args.tasks} fixed {args.dataset}/{args.split} episodes, {args.n_way}-way "
             f"{args.k_shot}-shot, {args.queries} queries per class, task seed {args.seed}; "
             "both runtimes adapt with the stored rule and predict with support-statistics "
             "BatchNorm; tasks_same_classes = episodes in which every query gets the same "
             "class from both; weight_err_f64_torch / weight_err_f64_executorch = each "
             "runtime's largest adapted-weight error against the same adaptation in float64 "
             "(PyTorch runtime; gradient rules only), so max_weight_diff can be read against "
             "eager float32's own rounding; weight_err_f64_exported_eager = the same error "
             "for the network as the training method computes it (im2col convolutions and "
             "the other exported layers) adapted by the PyTorch runtime in float32: the "
             "exported formulation's own rounding, without ExecuTorch's kernels; "
             f"tasks_weight_diff_over_tol = episodes whose adapted weights differ by more "
             f"than {WEIGHT_TOL:.0e} between the runtimes; the *_torch_backends columns "
             "compare the PyTorch runtime with itself, its default oneDNN convolutions "
             "against its native ones (torch.backends.mkldnn disabled): how far two float32 "
             "implementations of the same adaptation drift apart on these episodes\n"
             f"- executorch {executorch.version.__version__}, {args.threads} thread(s) in both "
             f"runtimes (torch.set_num_threads, ExecuTorch's thread pool); times: median of "
             f"{args.reps} runs on episode 0, the two runtimes taking turns run by run "
             f"(adapt = the rule's steps; predict = all {args.n_way * args.queries} queries)"
             "; predict_time_ratio = ExecuTorch / PyTorch\n"
             f"- peak memory: median of {args.mem_reps} fresh processes, increase of VmHWM "
             "over the resident set after the imports: load_adapt = loading the model file "
             "and adapting once (ExecuTorch plans and allocates its memory when it loads a "
             "method), adapt = one adaptation after that"
             + (f"\n- {args.note}" if args.note else ""))
    _report.write_results(Path(args.out), "ExecuTorch runtime vs PyTorch runtime", notes, rows)
    print(with_extension(args.out, ".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
