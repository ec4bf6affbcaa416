"""Shared helpers for benchmark scripts: machine description and result files (CSV + md)."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip()
        # results files are outputs, not inputs: a run that rewrites them is not "dirty"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)benchmarks/results"],
                               capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()
        commit += " (+uncommitted changes)" if dirty else ""
    except OSError:
        commit = "unknown"
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": f"{cpu} ({os.cpu_count()} cores)", "gpu": gpu,
            "torch": torch.__version__, "threads": str(torch.get_num_threads()),
            "python": platform.python_version(),
            "git_commit": commit}


def command_line() -> str:
    return "python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def rss_kb(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def interleaved_medians(fns: dict, reps: int, rounds: int = 10, warmup: int = 5) -> dict:
    """Median wall time of each ``fns[name]()`` over ``reps`` calls, taken in ``rounds`` turns
    that visit every function once each (``reps // rounds`` calls a turn, at least one), so
    that a change in the machine's load lands on all of them alike and their ratios hold."""
    import statistics
    import time

    per_turn = max(1, reps // rounds)
    times: dict = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_turn):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def add_model_and_episode_options(ap, dataset: str) -> None:
    """The device-side reports' common flags: models to measure and where episodes come from."""
    ap.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT")
    ap.add_argument("--dataset", default=dataset)
    ap.add_argument("--split", default="test")
    ap.add_argument("--root", help="data folder (default: $METAPRUNE_DATA)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="dataset option, e.g. --option image_size=28 (repeatable)")


def measure_models(specs: list[str], measure, args, tmp: Path | None = None) -> list[dict]:
    """One row per ``--model NAME=CHECKPOINT``: ``measure(name, checkpoint, args, tmp_dir)``,
    with a shared folder (``tmp``, or a temporary one removed at the end) and a line on stderr
    per model."""
    import contextlib
    import tempfile
    import time

    rows = []
    with (contextlib.nullcontext(tmp) if tmp is not None
          else tempfile.TemporaryDirectory()) as tmp:
        for spec in specs:
            name, sep, ckpt = spec.partition("=")
            if not sep:
                raise ValueError(f"--model '{spec}': expected NAME=CHECKPOINT")
            t0 = time.time()
            rows.append(measure(name, ckpt, args, Path(tmp)))
            print(f"{name}: done in {time.time() - t0:.0f}s", file=sys.stderr)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    from metaprune.io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _columns(rows: list[dict]) -> list[str]:
    """Every key of ``rows``, in order of first appearance (rows may have extra columns)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def write_results(stem: Path, title: str, notes: str, rows: list[dict], tail: str = "") -> None:
    """``stem``.csv with ``rows`` and ``stem``.md (header with command, date, machine and
    commit; ``notes``; the table; ``tail``)."""
    from metaprune.io import atomic_write_text, with_extension

    stem.parent.mkdir(parents=True, exist_ok=True)
    write_csv(with_extension(stem, ".csv"), rows)
    md = header(title, notes) + "\n" + markdown_table(rows) + "\n" + tail
    atomic_write_text(with_extension(stem, ".md"), md)


def dense_row(stem: str, results: Path | None = None) -> dict[str, str]:
    """The dense model's row of the results CSV ``stem`` (a ``model`` or ``method`` column)."""
    with open((results or RESULTS) / f"{stem}.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("method", r.get("model")) == "dense"]
    if not rows:
        raise ValueError(f"{stem}.csv has no dense row")
    return rows[0]


def file_at_commit(commit: str, path: str) -> str | None:
    """The text of the repository file ``path`` at git commit ``commit`` (the first word of a
    results header's commit field), or None where git does not have it."""
    shown = subprocess.run(["git", "show", f"{commit.split()[0]}:{path}"], capture_output=True,
                           text=True, cwd=Path(__file__).parent)
    return shown.stdout if shown.returncode == 0 else None


def cached_evaluation(path: Path, tasks, learner, evaluate_now):
    """The ``EvalResult`` saved at ``path`` if it is the evaluation of ``learner`` (same
    weights, masks, config and steps) on ``tasks``; otherwise ``evaluate_now(learner)``,
    timed (``meta["eval_seconds"]``) and saved there."""
    import time

    from metaprune.evaluation import EvalResult

    if path.exists():
        res = EvalResult.load(path)
        if res.matches(tasks, learner):
            return res
    t0 = time.perf_counter()
    res = evaluate_now(learner)
    res.meta["eval_seconds"] = time.perf_counter() - t0
    res.save(path)
    return res


def accuracy_columns(res, diff=None) -> dict:
    """Result columns shared by the accuracy tables: mean accuracy and 95% CI of an
    ``EvalResult`` and, when given, its paired difference to the reference (points)."""
    return {"accuracy": round(100 * res.accuracy, 2), "ci95": round(100 * res.ci95, 2),
            "diff_vs_dense": None if diff is None else round(100 * diff.mean, 2),
            "diff_ci95": None if diff is None else round(100 * diff.ci95, 2),
            "tasks": int(res.accuracies.size)}


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    cols = columns or _columns(rows)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


def header(title: str, notes: str = "", command: str | None = None) -> str:
    m = machine()
    lines = [f"# {title}", "", f"- command: `{command or command_line()}`",
             f"- date: {m['date']}", f"- machine: {m['cpu']}; GPU: {m['gpu']}",
             f"- torch {m['torch']} (torch threads of this process: {m['threads']}), Python "
             f"{m['python']}, git commit {m['git_commit']}"]
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"
