"""Speed and scaling: every row measured side by side in one run, on the same tasks.

    python benchmarks/speed.py                       # this machine's CPU cores (~10 minutes)
    python benchmarks/speed.py --device cuda         # one process per GPU instead of per core

Modes (each a fresh process or a fresh ``torchrun`` job of this script with ``--worker``):
1 process x 1 thread; 1 process x all cores' threads (torch's default before metaprune set
one); N workers x 1 thread (metaprune's default: ``--workers`` = physical cores); each again
next to one competing busy process that this script starts and stops itself. Workloads:
meta-training iterations/s (MAML through ``metaprune.training.meta_train``, Conv4-32/64, 5- and
20-way 1-shot, first and second order, meta-batch 8/16/32), a 600-task evaluation, and one ANP
pruning round on Conv4-64 split by stage next to one meta-iteration over the same 20 tasks.
The full grid runs in the two unloaded modes that the targets compare; the other modes run the
demo's workload and the evaluation. An external anchor, MAML written with the ``higher``
package (benchmarks/anchor_higher.py), runs the training and evaluation rows in one process
with one thread. Each row runs for at least ``--seconds`` (and 2 timed iterations) after one
warm-up iteration; the evaluation stops early in a mode slower than ``--eval-cap`` seconds and
reports the time extrapolated to 600 tasks (column ``measured`` says how many ran).
metaprune's processes tune glibc's allocator as the ``metaprune`` command does
(``metaprune.distributed.tune_allocator``); one more idle mode runs the grid without it, a
mode with all threads, glibc's allocator and nn.MaxPool2d's kernel everywhere stands for the
defaults before metaprune chose them, and the anchor runs with the default allocator, as a
user of ``higher`` gets it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, write_results  # noqa: E402

from metaprune import distributed as mpdist  # noqa: E402
from metaprune.data.glyphs import glyphs  # noqa: E402
from metaprune.data.tasks import TaskList, TaskSampler  # noqa: E402
from metaprune.evaluation import evaluate  # noqa: E402
from metaprune.learners import build_learner  # noqa: E402
from metaprune.models import build_model  # noqa: E402
from metaprune.training import meta_train  # noqa: E402

# (width, ways, order, meta-batch); the demo's workload first
DEMO = (32, 5, 2, 8)
GRID = [DEMO, (32, 5, 2, 16), (32, 5, 2, 32), (32, 5, 1, 8), (64, 5, 2, 8), (64, 5, 1, 8),
        (32, 20, 2, 8), (32, 20, 1, 8), (64, 20, 2, 8)]
EVAL_TASKS = 600
ANP_WIDTH = 64  # the ANP round's Conv4


def shrink() -> None:
    """--smoke: Conv4-4 workloads, 4 evaluation tasks (tests/test_benchmarks_smoke.py)."""
    global DEMO, GRID, EVAL_TASKS, ANP_WIDTH
    DEMO = (4, 5, 2, 2)
    GRID = [DEMO, (4, 5, 1, 2)]
    EVAL_TASKS, ANP_WIDTH = 4, 4


def name_of(w: tuple[int, int, int, int]) -> str:
    width, ways, order, mb = w
    return f"Conv4-{width} {ways}-way 1-shot, {'2nd' if order == 2 else '1st'} order, mb {mb}"


@cache
def dataset(split: str, ways: int):
    return glyphs(split, num_classes=max(2 * ways, 20), samples_per_class=16, image_size=28)


def make_learner(width: int, ways: int, first_order: bool, device: str):
    torch.manual_seed(0)
    net = build_model("conv4", n_way=ways, in_channels=1, image_size=28, width=width)
    return build_learner("fomaml" if first_order else "maml", net.to(device), inner_lr=0.4,
                         inner_steps=1, eval_inner_steps=3)


def keep_going(start: float, done: int, seconds: float, minimum: int = 2) -> bool:
    """Rank 0 decides for every rank (all ranks must run the same number of iterations)."""
    flag = torch.tensor([float(done < minimum or time.perf_counter() - start < seconds)])
    mpdist.broadcast_([flag])
    return bool(flag.item())


def time_training(w: tuple[int, int, int, int], seconds: float, device: str) -> dict:
    width, ways, order, mb = w
    learner = make_learner(width, ways, order == 1, device)
    sampler = TaskSampler(dataset("train", ways), ways, 1, 15, seed=0)
    meta_train(learner, sampler, 1, mb, progress=False, device=device)  # warm-up
    mpdist.barrier()
    t0, done = time.perf_counter(), 0
    while keep_going(t0, done, seconds):
        meta_train(learner, sampler, done + 2, mb, start_iteration=done + 1, progress=False,
                   device=device)
        done += 1
    mpdist.barrier()
    return {"iterations": done, "seconds": time.perf_counter() - t0}


def time_evaluation(cap: float, device: str) -> dict:
    data = dataset("test", 5)
    specs = TaskSampler(data, 5, 1, 15, seed=1).fixed_specs(EVAL_TASKS)
    learner = make_learner(32, 5, False, device)
    evaluate(learner, data, TaskList(specs[:4]), progress=False, device=device)  # warm-up
    mpdist.barrier()
    t0, done, chunk = time.perf_counter(), 0, min(50, EVAL_TASKS)
    while done < EVAL_TASKS and keep_going(t0, done, cap, minimum=chunk):
        evaluate(learner, data, TaskList(specs[done: done + chunk]), progress=False,
                 device=device)
        done += chunk
    mpdist.barrier()
    return {"tasks": done, "seconds": time.perf_counter() - t0}


def time_anp_round(device: str) -> list[dict]:
    """One ANP round on Conv4-64 5-way (20 scoring tasks) by stage, from dense to 10% (the
    default schedule's first round) and to 85% in one step (the largest compensation), next to
    one meta-iteration over the same 20 tasks."""
    from metaprune.pruning.criteria import get_criterion
    from metaprune.pruning.pruner import prune_step

    sampler = TaskSampler(dataset("train", 5), 5, 1, 15, seed=0)
    tasks = [t.to(device) for t in sampler.batch(10_000, 20)]
    learner = make_learner(ANP_WIDTH, 5, False, device)
    learner.meta_step(tasks[:2])  # warm-up
    t0 = time.perf_counter()
    learner.meta_step(tasks)
    meta_s = time.perf_counter() - t0
    rows = []
    for target in (0.10, 0.85):
        lr = make_learner(ANP_WIDTH, 5, False, device)
        _, st = prune_step(lr, get_criterion("anp"), tasks, target)
        stages = {k: st[f"{k}_seconds"] for k in ("score", "select", "compensate", "mask")}
        rows.append({"target": target, **stages, "meta_iteration": meta_s})
    return rows


def worker(args: argparse.Namespace) -> None:
    mpdist.apply_threads(args.threads)
    if not args.default_malloc:
        mpdist.tune_allocator()  # as the metaprune command does
    if args.nn_pool:  # the pooling before MaxPool2's fast path: nn.MaxPool2d's kernel always
        import metaprune.models.layers

        metaprune.models.layers.FAST_POOL_MIN_NUMEL = sys.maxsize
    device = mpdist.init_from_env(args.device)
    out: dict = {"train": {}, "world_size": mpdist.world_size()}
    for w in (GRID if args.grid else [DEMO]):
        out["train"][name_of(w)] = time_training(w, args.seconds, device)
    out["eval"] = time_evaluation(args.eval_cap, device)
    if args.anp:
        out["anp"] = time_anp_round(device)
    if mpdist.is_main():
        Path(args.json).write_text(json.dumps(out))
    mpdist.shutdown()


def anchor(args: argparse.Namespace) -> None:
    """MAML written with ``higher``, one process, one thread, on the rows of the grid."""
    from anchor_higher import higher_eval_seconds_per_task, higher_maml_seconds_per_iteration

    torch.set_num_threads(1)
    out: dict = {"train": {}}
    for w in GRID:
        width, ways, order, mb = w
        learner = make_learner(width, ways, order == 1, "cpu")
        tasks = TaskSampler(dataset("train", ways), ways, 1, 15, seed=0).batch(0, mb)
        # as many iterations as ours needs for --seconds, at least 2
        its = max(2, int(args.seconds / max(1e-3, args.ours[name_of(w)])))
        out["train"][name_of(w)] = {"iterations": its, "seconds": its * (
            higher_maml_seconds_per_iteration(learner.model, tasks, 0.4, 1, order == 1, its))}
    data = dataset("test", 5)
    tasks = TaskList(TaskSampler(data, 5, 1, 15, seed=1).fixed_specs(100)).tasks(data)
    per_task = higher_eval_seconds_per_task(make_learner(32, 5, False, "cpu").model,
                                            list(tasks), 0.4, 3)
    out["eval"] = {"tasks": 100, "seconds": 100 * per_task}
    Path(args.json).write_text(json.dumps(out))


def run_mode(args, workers: int, threads: int, grid: bool, anp: bool,
             default_malloc: bool = False, nn_pool: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        js = str(Path(tmp) / "out.json")
        tail = [str(Path(__file__).resolve()), "--worker", "--json", js, "--threads",
                str(threads), "--seconds", str(args.seconds), "--eval-cap", str(args.eval_cap),
                "--device", args.device] + (["--grid"] if grid else []) + (
                    ["--smoke"] if args.smoke else []) + (
                    ["--anp"] if anp else []) + (
                    ["--default-malloc"] if args.default_malloc or default_malloc else []) + (
                    ["--nn-pool"] if nn_pool else [])
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={workers}"] if workers > 1 else [sys.executable]) + tail
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(Path(js).read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=4.0, help="minimum timed seconds per row")
    p.add_argument("--eval-cap", type=float, default=60.0,
                   help="stop a mode's 600-task evaluation after this many seconds")
    p.add_argument("--name", default="speed")
    p.add_argument("--no-anchor", action="store_true")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's allocator as it is in the metaprune processes")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nn-pool", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--anchor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--grid", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--anp", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ours", type=json.loads, help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="tiny workloads (a test of the script)")
    args = p.parse_args()
    if args.smoke:
        shrink()
    if args.worker:
        return worker(args)
    if args.anchor:
        return anchor(args)

    cuda = args.device.startswith("cuda")
    n = torch.cuda.device_count() if cuda else mpdist.physical_cores()
    cores = os.cpu_count() or 1
    # (label, workers, threads, glibc's default allocator, nn.MaxPool2d everywhere)
    modes = [("1 process x 1 thread", 1, 1, False, False),
             (f"1 process x {cores} threads", 1, cores, False, False),
             (f"1 process x {cores} threads, glibc allocator, nn.MaxPool2d (the defaults "
              "before metaprune set threads, workers, allocator and pooling)", 1, cores, True,
              True),
             (f"{n} workers x 1 thread (metaprune's default)", n, 1, False, False)]
    base, default = modes[0][0], modes[3][0]
    results: dict[tuple[str, str], dict] = {}
    for loaded in (False, True):
        busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                if loaded else None)
        try:
            for label, workers, threads, plain_malloc, nn_pool in modes:
                grid = not loaded and label in (base, default)
                anp = not loaded and label == base
                load = "one busy process" if loaded else "idle"
                print(f"{label}, {load} ...", file=sys.stderr, flush=True)
                results[(label, load)] = run_mode(args, workers, threads, grid, anp,
                                                  plain_malloc, nn_pool)
            if not loaded and not args.default_malloc:  # what tune_allocator() buys
                label = "1 process x 1 thread, glibc's default allocator"
                print(f"{label}, idle ...", file=sys.stderr, flush=True)
                results[(label, "idle")] = run_mode(args, 1, 1, True, False, True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    anchor_res = None
    if not args.no_anchor and not cuda:
        ours = {k: v["seconds"] / v["iterations"]
                for k, v in results[(base, "idle")]["train"].items()}
        with tempfile.TemporaryDirectory() as tmp:
            js = str(Path(tmp) / "a.json")
            print("anchor (higher) ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--anchor",
                            "--json", js, "--seconds", str(args.seconds), "--ours",
                            json.dumps(ours)] + (["--smoke"] if args.smoke else []), check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
            anchor_res = json.loads(Path(js).read_text())
    write(args, results, anchor_res, base, default, modes[2][0])


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}-{hi:.2f}x"


def summary(rows: list[dict], base: str, default: str, before: str) -> str:
    """The issue-18 ratios, computed from this run's rows (docs cite this table)."""
    def rate(mode: str, load: str = "idle", what: str = "meta-train") -> dict[str, float]:
        return {r["workload"]: (r["iterations_per_s"] if what == "meta-train"
                                else 1.0 / r["seconds_600_tasks"])
                for r in rows if r["mode"] == mode and r["load"] == load
                and r["workload"].startswith(what)}

    def ratio(a: dict, b: dict) -> str:
        common = [k for k in a if k in b]
        return _span([a[k] / b[k] for k in common]) if common else "-"

    lines = ["\n## Summary (ratios of the rows above)\n",
             "| comparison | meta-training | 600-task evaluation |", "|---|---|---|"]
    for label, a, b in [
            (f"{default} vs {base}", default, base),
            (f"{default} vs before ({before.split(' (')[0]})", default, before),
            ("1 process x 1 thread vs glibc's default allocator", base,
             "1 process x 1 thread, glibc's default allocator")]:
        lines.append(f"| {label} | {ratio(rate(a), rate(b))} | "
                     f"{ratio(rate(a, what='evaluate'), rate(b, what='evaluate'))} |")
    for label, mode in [(f"share of idle throughput kept next to one busy process: {default}",
                         default), ("the same, before", before)]:
        busy_eval = rate(mode, "one busy process", "evaluate")
        lines.append(f"| {label} | {ratio(rate(mode, 'one busy process'), rate(mode))} | "
                     f"{ratio(busy_eval, rate(mode, what='evaluate'))} |")
    anchor = "higher (anchor), 1 x 1"
    lines.append(f"| {base} vs MAML written with higher (1 x 1) | "
                 f"{ratio(rate(base), rate(anchor))} | "
                 f"{ratio(rate(base, what='evaluate'), rate(anchor, what='evaluate'))} |")
    return "\n".join(lines) + "\n"


def write(args, results: dict, anchor_res: dict | None, base: str, default: str,
          before: str) -> None:
    rows = []
    ref = results[(base, "idle")]
    for (label, load), res in results.items():
        for w, r in res["train"].items():
            ips = r["iterations"] / r["seconds"]
            b = ref["train"][w]
            rows.append({"workload": f"meta-train {w}", "mode": label, "load": load,
                         "iterations_per_s": round(ips, 3),
                         "vs_1p1t_idle": round(ips / (b["iterations"] / b["seconds"]), 2),
                         "measured": f"{r['iterations']} it in {r['seconds']:.1f} s"})
        e = res["eval"]
        s600 = e["seconds"] * EVAL_TASKS / e["tasks"]
        b = ref["eval"]
        rows.append({"workload": "evaluate 600 tasks (Conv4-32 5-way 1-shot, 3 steps)",
                     "mode": label, "load": load, "seconds_600_tasks": round(s600, 1),
                     "vs_1p1t_idle": round(b["seconds"] * EVAL_TASKS / b["tasks"] / s600, 2),
                     "measured": f"{e['tasks']} tasks in {e['seconds']:.1f} s"})
    if anchor_res:
        for w, r in anchor_res["train"].items():
            ips = r["iterations"] / r["seconds"]
            b = ref["train"][w]
            rows.append({"workload": f"meta-train {w}", "mode": "higher (anchor), 1 x 1",
                         "load": "idle", "iterations_per_s": round(ips, 3),
                         "vs_1p1t_idle": round(ips / (b["iterations"] / b["seconds"]), 2),
                         "measured": f"{r['iterations']} it in {r['seconds']:.1f} s"})
        e = anchor_res["eval"]
        s600 = e["seconds"] * EVAL_TASKS / e["tasks"]
        rows.append({"workload": "evaluate 600 tasks (Conv4-32 5-way 1-shot, 3 steps)",
                     "mode": "higher (anchor), 1 x 1", "load": "idle",
                     "seconds_600_tasks": round(s600, 1),
                     "vs_1p1t_idle": round(ref["eval"]["seconds"] * EVAL_TASKS
                                           / ref["eval"]["tasks"] / s600, 2),
                     "measured": f"{e['tasks']} tasks in {e['seconds']:.1f} s"})
    anp_rows = ref.get("anp", [])
    tail = ""
    if anp_rows:
        from _report import markdown_table

        table = []
        for r in anp_rows:
            total = r["score"] + r["select"] + r["compensate"] + r["mask"]
            table.append({"round": f"dense -> {r['target']:.0%}",
                          **{f"{k}_s": round(r[k], 3)
                             for k in ("score", "select", "compensate", "mask")},
                          "total_s": round(total, 3),
                          "meta_iteration_s": round(r["meta_iteration"], 3),
                          "round / meta-iteration": round(total / r["meta_iteration"], 2)})
        tail = ("\n## One ANP round, Conv4-64 5-way 1-shot, 20 scoring tasks, 1 process x 1 "
                "thread\n\nEvery stage of `prune_step` (scoring builds the tasks' Hessians; "
                "compensation is the joint OBS solve; masks = selection + setting them), next "
                "to one second-order meta-iteration over the same 20 tasks.\n\n"
                + markdown_table(table) + "\n")
    tail = summary(rows, base, default, before) + tail
    notes = ("Ratios compare rows of this one run (`vs_1p1t_idle`: throughput relative to 1 "
             "process x 1 thread on the idle machine, same workload). Meta-training is MAML "
             "(`fomaml` for 1st order) through `metaprune.training.meta_train` with 1 inner "
             "step, 15 queries per class, glyphs images at 28 px. A worker count above the "
             "meta-batch or task count would idle; here it never is.")
    write_results(RESULTS / args.name, "Speed and scaling (benchmarks/speed.py)", notes, rows,
                  tail)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
