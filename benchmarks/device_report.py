"""Device report: what each model costs on a CPU device and how well it adapts.

For every model (a checkpoint; exported to .mpz here): stored bytes (.mpz on disk), parameters
(total and non-zero), FLOPs per image (dense execution, and counting non-zero weights only),
batch-1 CPU inference latency of the adapted model (support-statistics BatchNorm folded into the
convolutions, as the runtime predicts; and with the BatchNorms kept as layers; and of its ONNX
export in ONNX Runtime, timed in a process of its own), adaptation wall time (runtime, stored
rule), peak memory during adaptation
(measured in a fresh subprocess: increase of the resident set's high-water mark, VmHWM reset via
/proc/self/clear_refs, plus tracemalloc's peak of Python allocations), and accuracy (runtime,
support-statistics BatchNorm) on fixed test tasks.

    python benchmarks/device_report.py --model dense=runs/glyphs/model \\
        --model anp85=runs/glyphs-anp85/round09 --model structured=runs/glyphs-slim50/model \\
        [--tasks 600] [--threads 1] [--out benchmarks/results/device_report]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import _report
import torch
from torch import nn

from metaprune.io import with_extension

ROOT = Path(__file__).resolve().parent.parent
# row key of the timings measure() leaves for main() to take in turns: column -> function
TIMED = "_timed"
TIMING_ROUNDS = 10  # turns over every model of each timing
ONNX = "_onnx"  # row key of the model's ONNX export (timed in a process of its own)
# without onnxruntime the report goes on without its column; it is not imported here, so its
# library stays out of the process that takes the PyTorch timings
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


def ort_latencies(paths: list[str], reps: int, threads: int) -> list[float]:
    """Runs in a fresh process (so ONNX Runtime's thread pools do not share a process with the
    PyTorch timings): batch-1 latency of each ONNX model, in turns over all of them."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sessions = [ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in paths]
    fns = {}
    for i, sess in enumerate(sessions):
        shape = [1, *sess.get_inputs()[0].shape[1:]]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        feed = {sess.get_inputs()[0].name: x}
        fns[i] = lambda sess=sess, feed=feed: sess.run(None, feed)
    medians = _report.interleaved_medians(fns, reps, rounds=TIMING_ROUNDS)
    return [medians[i] for i in range(len(paths))]


def memprobe(mpz: str, n_way: int, k_shot: int, seed: int) -> dict:
    """Runs in a fresh process: peak memory of one adaptation (after loading everything)."""
    from metaprune.deploy.runtime import DeviceModel

    dm = DeviceModel.load(mpz)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_way * k_shot, dm.channels, dm.size, dm.size, generator=g)
    y = torch.arange(n_way).repeat_interleave(k_shot)
    first = torch.arange(n_way) * k_shot
    dm.adapt(x[first], y[first], steps=1)  # warm-up: lazy initialisations, thread pools
    gc.collect()
    base = _report.rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")   # reset VmHWM to the current RSS
    tracemalloc.start()
    a = dm.adapt(x, y)
    a.inference_module()
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rss_peak_delta_kb": _report.rss_kb("VmHWM") - base,
            "tracemalloc_peak_kb": py_peak / 1024,
            "rss_base_kb": base}


def flops(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(dense, non-zero-weight) FLOPs (2 x multiply-adds) of conv/linear layers, one image."""
    dense = nonzero = 0
    hooks = []

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal dense, nonzero
        positions = out[0].numel() // m.weight.shape[0]   # spatial positions (1 for Linear)
        per_out = m.weight[0].numel()
        dense += 2 * out[0].numel() * per_out
        nonzero += 2 * positions * int((m.weight != 0).sum())

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.rand(2, *shape))
    for h in hooks:
        h.remove()
    return dense, nonzero


def measure(name: str, ckpt: str, args: argparse.Namespace, tmp: Path) -> dict:
    from metaprune.checkpoint import load_checkpoint
    from metaprune.data.registry import get_dataset
    from metaprune.data.tasks import TaskSampler
    from metaprune.deploy.format import mpz_from_learner, save_mpz, size_report
    from metaprune.deploy.runtime import DeviceModel

    ck = load_checkpoint(ckpt, with_optimizer=False)
    mpz_path = save_mpz(tmp / f"{name}.mpz", mpz_from_learner(ck.learner))
    rep = size_report(mpz_path)
    dm = DeviceModel.load(mpz_path)
    shape = (dm.channels, dm.size, dm.size)
    n_params = sum(p.numel() for p in dm.model.parameters())
    n_nonzero = sum(int((p != 0).sum()) for p in dm.model.parameters())
    f_dense, f_nz = flops(dm.model, shape)
    # accuracy on fixed test tasks, runtime path (support-statistics BatchNorm)
    ds = get_dataset(args.dataset, args.split, args.root, **args.options)
    sampler = TaskSampler(ds, args.n_way, 1, args.queries, seed=args.seed)
    accs = []
    for i in range(args.tasks):
        t = sampler.task(i)
        a = dm.adapt(t.support_x, t.support_y)
        accs.append((a.logits(t.query_x).argmax(1) == t.query_y).float().mean().item())
    acc = 100 * sum(accs) / len(accs)
    ci = 196 * statistics.stdev(accs) / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
    # timings on one task: timed later, in turns with the other models (main)
    t = sampler.task(0)
    adapted = dm.adapt(t.support_x, t.support_y)
    one = t.query_x[:1]
    onnx_path = None
    if HAS_ORT:
        from metaprune.deploy.onnx_export import export_onnx

        onnx_path = str(export_onnx(adapted, tmp / f"{name}.onnx", t.support_x))

    def infer(net: nn.Module):
        def run() -> None:
            with torch.no_grad():
                net(one)
        return run
    # peak memory in fresh processes (adapting, then building the folded prediction module;
    # median of --mem-reps). Buffers above 64 KiB are mmapped and returned on free (glibc
    # tunables), so the resident high-water mark follows the live tensors instead of the
    # allocator's cached free lists.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MALLOC_MMAP_THRESHOLD_": "65536",
           "MALLOC_TRIM_THRESHOLD_": "0"}
    probes = []
    for _ in range(args.mem_reps):
        out = subprocess.run([sys.executable, __file__, "--memprobe", str(mpz_path), "--n-way",
                              str(args.n_way), "--k-shot", str(args.mem_k_shot),
                              "--threads", str(args.threads)],
                             capture_output=True, text=True, timeout=600, env=env)
        if out.returncode:
            raise RuntimeError(f"memory probe failed for {name}: {out.stderr[-2000:]}")
        probes.append(json.loads(out.stdout.strip().splitlines()[-1]))
    mem = {k: statistics.median(p[k] for p in probes) for k in probes[0]}
    return {"model": name, "checkpoint": ckpt, "architecture": json.dumps(dm.meta["model"]),
            "stored_bytes": rep.compact_bytes, "dense_bytes": rep.dense_bytes,
            "params": n_params, "nonzero_params": n_nonzero,
            "mflops_dense": f_dense / 1e6, "mflops_nonzero": f_nz / 1e6,
            "latency_ms_b1": None, "latency_ms_b1_bn": None, "ort_latency_ms_b1": None,
            "adapt_ms": None, ONNX: onnx_path,
            TIMED: {"latency_ms_b1": infer(adapted.inference_module()),
                    "latency_ms_b1_bn": infer(adapted.inference_module(fold_bn=False)),
                    "adapt_ms": lambda: dm.adapt(t.support_x, t.support_y)},
            "adapt_peak_rss_kb": mem["rss_peak_delta_kb"],
            "adapt_tracemalloc_peak_kb": round(mem["tracemalloc_peak_kb"], 1),
            "accuracy": round(acc, 2), "accuracy_ci95": round(ci, 2)}


def timings(rows: list[dict], args: argparse.Namespace) -> None:
    """Fill each row's timed columns: the PyTorch ones in turns over every model, then ONNX
    Runtime in a process of its own."""
    timed = [r.pop(TIMED) for r in rows]
    for column, reps in (("latency_ms_b1", args.reps_infer),
                         ("latency_ms_b1_bn", args.reps_infer), ("adapt_ms", args.reps_adapt)):
        # every model in turns, so their ratios share the machine's load
        fns = {i: t[column] for i, t in enumerate(timed)}
        medians = _report.interleaved_medians(fns, reps, rounds=TIMING_ROUNDS)
        for i, r in enumerate(rows):
            r[column] = 1000 * medians[i]
    onnx_paths = [r.pop(ONNX) for r in rows]
    if HAS_ORT:  # after the PyTorch timings, in a process of its own
        out = subprocess.run([sys.executable, __file__, "--ort-latency", *onnx_paths,
                              "--reps-infer", str(args.reps_infer), "--threads",
                              str(args.threads)], capture_output=True, text=True, timeout=1800,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        if out.returncode:
            raise RuntimeError(f"ONNX Runtime timing failed: {out.stderr[-2000:]}")
        for r, sec in zip(rows, json.loads(out.stdout.strip().splitlines()[-1])):
            r["ort_latency_ms_b1"] = 1000 * sec


def machine() -> str:
    m = _report.machine()
    return (f"{platform.system()} {platform.machine()}, {m['cpu']}, Python {m['python']}, "
            f"torch {m['torch']}")


def git_commit() -> str:
    return _report.machine()["git_commit"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _report.add_model_and_episode_options(ap, dataset="glyphs")
    ap.add_argument("--note", action="append", default=[],
                    help="sentence for the md's Notes section (repeatable)")
    ap.add_argument("--n-way", type=int, default=5)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--mem-k-shot", type=int, default=5,
                    help="support images per class in the memory probe (default 5)")
    ap.add_argument("--k-shot", type=int, default=5, help=argparse.SUPPRESS)
    ap.add_argument("--mem-reps", type=int, default=3, help="memory probes per model")
    ap.add_argument("--reps-adapt", type=int, default=30)
    ap.add_argument("--reps-infer", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/device_report"))
    ap.add_argument("--memprobe", help=argparse.SUPPRESS)
    ap.add_argument("--ort-latency", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from metaprune.config import parse_key_value

    args.options = dict(parse_key_value(o, "--option") for o in args.option)
    if args.ort_latency:
        print(json.dumps(ort_latencies(args.ort_latency, args.reps_infer, args.threads)))
        return 0
    if args.memprobe:
        print(json.dumps(memprobe(args.memprobe, args.n_way, args.k_shot, args.seed)))
        return 0
    if not args.model:
        ap.error("give at least one --model NAME=CHECKPOINT")

    with tempfile.TemporaryDirectory() as tmp:  # the .mpz and .onnx files, until timed
        rows = _report.measure_models(args.model, measure, args, Path(tmp))
        timings(rows, args)
    base = rows[0]
    for r in rows:
        r["latency_vs_first"] = round(r["latency_ms_b1"] / base["latency_ms_b1"], 3)
        r["latency_bn_vs_first"] = round(r["latency_ms_b1_bn"] / base["latency_ms_b1_bn"], 3)
        r["ort_latency_vs_first"] = (round(r["ort_latency_ms_b1"] / base["ort_latency_ms_b1"], 3)
                                     if HAS_ORT else None)
        r["adapt_mem_vs_first"] = round(r["adapt_peak_rss_kb"] / max(base["adapt_peak_rss_kb"],
                                                                      1), 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/device_report.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    with open(with_extension(out, ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data = args.dataset + (f" {args.options}" if args.options else "")
    md = [f"# Device report ({data}/{args.split}, {args.n_way}-way 1-shot)", "",
          f"- command: `{cmd}`", f"- date: {now}", f"- machine: {machine()}",
          f"- git commit: {git_commit()}", f"- torch threads: {args.threads}",
          f"- accuracy: runtime adaptation (stored rule) and support-statistics BatchNorm on "
          f"{args.tasks} fixed test tasks ({args.queries} queries per class, seed {args.seed})",
          f"- latency: median of {args.reps_infer} batch-1 forward passes of the adapted model "
          "(its BatchNorms frozen at the support statistics and folded into the convolutions, "
          "as the runtime predicts; 'BN as layers': not folded; 'ONNX Runtime': the model's ONNX "
          "export (metaprune export-onnx; its graph also computes the probabilities) in "
          "onnxruntime "
          f"{importlib.metadata.version('onnxruntime') if HAS_ORT else '(not installed)'}, "
          f"{args.threads} intra-op thread(s), in a process of its own after the PyTorch "
          "timings);"
          f" adaptation: median of {args.reps_adapt} runtime adaptations on a 5-way 1-shot "
          f"support set; both timed in {TIMING_ROUNDS} turns that visit every model (so a "
          "change in the machine's load lands on all of them and the ratios hold)",
          f"- adaptation peak memory: median of {args.mem_reps} fresh processes, "
          f"{args.n_way}-way {args.mem_k_shot}-shot support set, increase of the peak resident "
          "set (VmHWM) over the resident set just before adapting, through adapting and "
          "building the prediction module (BatchNorm folded: a torch.fx trace; glibc: buffers "
          "> 64 KiB mmapped and returned on free); tracemalloc = Python-level allocations only",
          "",
          "| model | stored bytes | params (non-zero) | MFLOPs dense (non-zero w.) "
          "| latency b=1 ms | latency b=1 ms, BN as layers | ONNX Runtime b=1 ms | adapt ms "
          "| adapt peak RSS KiB | tracemalloc KiB | accuracy % |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['stored_bytes']:,} | {r['params']:,} "
                  f"({r['nonzero_params']:,}) | {r['mflops_dense']:.2f} "
                  f"({r['mflops_nonzero']:.2f}) | {r['latency_ms_b1']:.3f} "
                  f"({r['latency_vs_first']:.2f}x) | {r['latency_ms_b1_bn']:.3f} "
                  f"({r['latency_bn_vs_first']:.2f}x) | "
                  + (f"{r['ort_latency_ms_b1']:.3f} ({r['ort_latency_vs_first']:.2f}x)"
                     if HAS_ORT else "n/a") + f" | {r['adapt_ms']:.1f} | "
                  f"{r['adapt_peak_rss_kb']:,} ({r['adapt_mem_vs_first']:.2f}x) | "
                  f"{r['adapt_tracemalloc_peak_kb']:.1f} | "
                  f"{r['accuracy']:.2f} +- {r['accuracy_ci95']:.2f} |")
    md.append("")
    md.append("Architectures: " + "; ".join(f"{r['model']}: `{r['architecture']}`"
                                            for r in rows))
    if args.note:
        md += ["", "## Notes", ""] + [f"- {n}" for n in args.note]
    with_extension(out, ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
