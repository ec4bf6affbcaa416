"""torch.distributed (gloo, 2 processes on this CPU) against one process: meta-training steps
of every learner, evaluation, ANP and Taylor pruning rounds, and a 2-worker training run killed
with SIGKILL and resumed. Tolerance: none. The outer step adds float64 sums of float32 per-task
gradients, which are exact unless an entry's terms span more than 2^29 in magnitude, so how
the tasks are split over ranks does not change a bit; a failure here means it did."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metaprune import distributed as mpdist
from metaprune.cli import main

HERE = Path(__file__).parent
TINY = ["--set", "data.options={num_classes: 12, samples_per_class: 8, image_size: 12}",
        "--set", "data.q_query=3", "--set", "model.kwargs={width: 4}",
        "--set", "train.meta_batch=3", "--set", "train.checkpoint_every=2",
        "--set", "eval.tasks=12", "--set", "eval.q_query=3", "--no-progress"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "METAPRUNE_WORKERS"}
    env["METAPRUNE_THREADS"] = "1"
    return env


def _torchrun(nproc: int, out: Path) -> dict[str, torch.Tensor]:
    out.mkdir()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={nproc}", str(HERE / "dist_scenarios.py"), str(out)],
                   check=True, env=_env(), capture_output=True, timeout=300)
    return {r: load_file(out / f"rank{r}.safetensors") for r in range(nproc)}


def test_shard_range_splits_every_index_once_in_order() -> None:
    for n in range(0, 13):
        for w in range(1, 6):
            parts = [mpdist.shard_range(n, r, w) for r in range(w)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_two_ranks_train_evaluate_and_prune_exactly_as_one(tmp_path) -> None:
    import dist_scenarios  # the same scenarios in this process: world size 1, no launcher

    (tmp_path / "w1").mkdir()
    dist_scenarios.main(str(tmp_path / "w1"))
    one = load_file(tmp_path / "w1" / "rank0.safetensors")
    two = _torchrun(2, tmp_path / "w2")
    assert set(one) == set(two[0]) == set(two[1])
    learners = {k.split(".")[1] for k in one if k.startswith("train.")}
    assert learners == {"maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "cavia"}
    assert any(k.startswith("prune.anp.mask.") for k in one)
    assert any(k.startswith("prune.taylor-meta.mask.") for k in one)
    for k, v in one.items():
        assert torch.equal(two[0][k], two[1][k]), f"ranks disagree on {k}"
        assert torch.equal(v, two[0][k]), f"world size 2 differs from 1 on {k}"
    # the comparison can fail: training moved the weights, pruning removed half of them
    assert not torch.equal(one["train.maml.model.head.weight"],
                           one["train.fomaml.model.head.weight"])
    assert float(one["prune.anp.mask.head.weight"].mean()) == pytest.approx(0.5, abs=0.05)


def _train(out: Path, workers: int, iterations: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "metaprune", "train", "--out", str(out), "--workers",
         str(workers), "--set", f"train.iterations={iterations}", *TINY],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # state, ppid, ...


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            parents[int(d.name)] = int(st[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [c for c, pp in parents.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _iteration(out: Path) -> int:
    try:
        return int(json.loads((out / "model.json").read_text())["iteration"])
    except (OSError, ValueError, KeyError):
        return 0


# long enough to be killed after its second checkpoint and before its last (checkpoints
# every 2 iterations; the kill follows within milliseconds of the second)
ITERATIONS = 60


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """A 2-worker training run that nothing interrupts: the reference."""
    ref = tmp_path_factory.mktemp("ref")
    p = _train(ref, 2, ITERATIONS)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    return ref


@pytest.mark.parametrize("resume_workers", [2, 1])
def test_two_worker_training_killed_and_resumed_ends_where_uninterrupted_does(
        tmp_path, uninterrupted, resume_workers) -> None:
    run = tmp_path / "run"
    p = _train(run, 2, ITERATIONS)
    deadline = time.time() + 120
    while _iteration(run) < 2 and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, p.communicate()[1].decode()
    workers = _descendants(p.pid)
    assert len(workers) >= 2, workers
    os.killpg(p.pid, signal.SIGKILL)       # the launcher's process group: not the workers'
    p.wait(timeout=60)
    time.sleep(0.5)  # the workers die with the launcher (PR_SET_PDEATHSIG); none writes on
    assert not [w for w in workers if _alive(w)], "workers outlived their launcher"
    killed_at = _iteration(run)
    assert 2 <= killed_at < ITERATIONS, f"killed at iteration {killed_at}"
    p = _train(run, resume_workers, ITERATIONS)   # 1: resume at another world size
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    assert f"resuming {run / 'model'} from iteration {killed_at}" in err.decode()
    a = load_file(uninterrupted / "model.safetensors")
    b = load_file(run / "model.safetensors")
    names = [k for k in a if k.startswith("model.")]
    assert names and all(torch.equal(a[k], b[k]) for k in names)
    ra = json.loads((uninterrupted / "eval_test.json").read_text())["per_task"]
    assert ra == json.loads((run / "eval_test.json").read_text())["per_task"]


def test_two_worker_prune_resumed_between_rounds_ends_where_uninterrupted_does(tmp_path) -> None:
    """A run resumed in a new process after round 1 (every rank restores round 1, whose masks
    come back from the file in an order of that process's own) prunes rounds 2 and 3 bit for
    bit as the uninterrupted run does: ranks exchanged masks by position once, so rank 1 trained
    with another layer's masks after most resumes."""
    assert main(["train", "--out", str(tmp_path / "d"), "--set", "train.iterations=4",
                 "--workers", "1", *TINY]) == 0
    prune = [sys.executable, "-m", "metaprune", "prune", str(tmp_path / "d" / "model"),
             "--method", "anp", "--schedule", "0.2x3", "--sparsity", "0.6", "--retrain-iters",
             "3", "--tasks", "4", "--val-tasks", "0", "--workers", "2", "--no-progress"]
    r = subprocess.run([*prune, "--out", str(tmp_path / "ref")], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the run folder as a run killed after round 1 leaves it
    (tmp_path / "run").mkdir()
    for f in (tmp_path / "ref").glob("round01.*"):
        shutil.copy(f, tmp_path / "run" / f.name)
    state = json.loads((tmp_path / "ref" / "state.json").read_text())
    assert len(state["rounds"]) == 3
    state["rounds"] = state["rounds"][:1]
    (tmp_path / "run" / "state.json").write_text(json.dumps(state))
    r = subprocess.run([*prune, "--out", str(tmp_path / "run")], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "round 1:" not in r.stderr and "round 3:" in r.stderr
    for rnd in ("round02", "round03"):
        a = load_file(tmp_path / "ref" / f"{rnd}.safetensors")
        b = load_file(tmp_path / "run" / f"{rnd}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rnd


def test_evaluate_with_two_workers_gives_the_per_task_accuracies_of_one(tmp_path) -> None:
    assert main(["train", "--out", str(tmp_path / "m"), "--set", "train.iterations=4",
                 *TINY]) == 0
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main(["evaluate", str(tmp_path / "m" / "model"), "--tasks", "30", "--no-progress",
                 "--save", str(one)]) == 0
    r = subprocess.run([sys.executable, "-m", "metaprune", "evaluate",
                        str(tmp_path / "m" / "model"), "--tasks", "30", "--workers", "2",
                        "--no-progress", "--save", str(two)], env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("on 30 test tasks") == 1        # rank 0 alone prints
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["task_fingerprint"] == b["task_fingerprint"] and a["per_task"] == b["per_task"]


def test_worker_and_thread_options_are_checked(tmp_path, capsys, monkeypatch) -> None:
    assert main(["evaluate", str(tmp_path / "x"), "--workers", "0"]) == 2
    assert "argument --workers: must be >= 1" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "x"), "--threads", "0"]) == 2
    assert "argument --threads: must be >= 1" in capsys.readouterr().err
    monkeypatch.setenv("METAPRUNE_THREADS", "two")
    assert main(["evaluate", str(tmp_path / "x")]) == 2
    assert "METAPRUNE_THREADS='two'" in capsys.readouterr().err
    monkeypatch.delenv("METAPRUNE_THREADS")
    monkeypatch.delenv("METAPRUNE_WORKERS")
    assert mpdist.resolve_workers(None) == mpdist.physical_cores()
    assert mpdist.resolve_workers(None, work_units=1) == 1
    assert mpdist.resolve_workers(3, work_units=1) == 3     # an explicit choice wins
    assert mpdist.resolve_workers(None, gpus=4) == 4


def test_allocator_tuning_applies_on_glibc_and_can_be_turned_off(monkeypatch) -> None:
    import platform

    monkeypatch.setenv("METAPRUNE_MALLOC", "0")
    assert mpdist.tune_allocator() is False
    monkeypatch.delenv("METAPRUNE_MALLOC")
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert mpdist.tune_allocator() is glibc
