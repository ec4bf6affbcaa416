"""Run integrity: a result belongs to the inputs that made it; one live job per run folder;
a kill at any instant of a checkpoint write leaves a loadable, verified checkpoint."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import random_pruned_learner
from test_cli import TINY

from metaprune.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from metaprune.cli import main
from metaprune.data.glyphs import glyphs
from metaprune.data.tasks import TaskList, TaskSampler
from metaprune.evaluation import EvalResult, evaluate, paired_difference
from metaprune.io import FolderInUseError, folder_lock
from metaprune.pruning import prune


def test_a_finished_train_rerun_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "train.iterations=2", *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--set", "train.iterations=4", *TINY]) == 2
    err = capsys.readouterr().err
    assert "another config (train.iterations: 2 -> 4): add --extend" in err and "--overwrite" in err
    assert json.loads((out / "model.json").read_text())["iteration"] == 2  # untouched
    assert main(["train", "--out", str(out), "--set", "train.iterations=4", "--overwrite",
                 *TINY]) == 0
    assert json.loads((out / "model.json").read_text())["iteration"] == 4


def test_extending_a_finished_run_equals_training_that_long_at_once(tmp_path, capsys):
    once, extended = tmp_path / "once", tmp_path / "extended"
    assert main(["train", "--out", str(once), "--set", "train.iterations=4", *TINY]) == 0
    assert main(["train", "--out", str(extended), "--set", "train.iterations=2", *TINY]) == 0
    capsys.readouterr()
    for refused, why in [(["--set", "train.iterations=1"], "a run of 2 iterations (2 done)"),
                         (["--set", "train.iterations=4", "--set", "learner.inner_lr=0.2"],
                          f"only train.iterations, but '{extended}' was made with other "
                          "settings too (learner.inner_lr: 0.4 -> 0.2)")]:
        assert main(["train", "--out", str(extended), "--extend", *TINY, *refused]) == 2
        assert why in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "none"), "--extend", *TINY]) == 2
    assert "holds no trained model to continue" in capsys.readouterr().err
    before = json.loads((extended / "model.json").read_text())
    assert main(["train", "--out", str(extended), "--extend", "--set", "train.iterations=4",
                 *TINY]) == 0
    a = load_checkpoint(once / "model", with_optimizer=False).learner
    b = load_checkpoint(extended / "model", with_optimizer=False).learner
    for name, w in a.meta_parameters().items():
        assert torch.equal(w, b.meta_parameters()[name]), name
    after = json.loads((extended / "model.json").read_text())
    assert after["iteration"] == 4 and after["extended_from"] == [2]
    assert after["train_seconds"] > before["train_seconds"]


def test_pruning_another_model_into_a_finished_run_is_refused(tmp_path):
    sampler = TaskSampler(glyphs("train", num_classes=10, samples_per_class=4), 5, 1, 2)
    opts = dict(method="magnitude", sparsity=0.5, schedule="0.5", retrain_iters=0,
                out_dir=tmp_path / "p", progress=False)
    prune(random_pruned_learner("maml", sparsity=0.0, width=8, seed=1), sampler, **opts)
    prune(random_pruned_learner("maml", sparsity=0.0, width=8, seed=1), sampler, **opts)
    with pytest.raises(ValueError, match="holds a pruning run of another model"):
        prune(random_pruned_learner("maml", sparsity=0.0, width=8, seed=2), sampler, **opts)


def test_cached_results_match_only_the_same_model_tasks_and_steps():
    data = glyphs("test", num_classes=10, samples_per_class=4)
    tasks = TaskList(TaskSampler(data, 5, 1, 2, seed=1).fixed_specs(3))
    a = random_pruned_learner("maml", width=8, seed=1)
    res = evaluate(a, data, tasks, progress=False)
    assert res.matches(tasks, a)
    assert not res.matches(tasks, random_pruned_learner("maml", width=8, seed=2))
    assert not res.matches(tasks, a, steps=a.eval_inner_steps + 1)
    assert not res.matches(TaskList(tasks.specs[:2]), a)
    with torch.no_grad():
        next(a.model.parameters())[0].add_(1e-3)  # same architecture, other weights
    assert not res.matches(tasks, a)
    other_steps = evaluate(a, data, tasks, steps=1, progress=False)
    with pytest.raises(ValueError, match="same number of adaptation steps: 3 vs 1"):
        paired_difference(res, other_steps)


def test_results_on_two_splits_with_equal_task_specs_are_never_paired_or_reused():
    from metaprune.experiment import test_tasks

    cfg = {"data": {"dataset": "glyphs", "n_way": 5, "k_shot": 1, "q_query": 2},
           "eval": {"tasks": 3, "seed": 7}}
    splits = {s: glyphs(s, num_classes=10, samples_per_class=4) for s in ("train", "test")}
    lists = {s: test_tasks(cfg, d, split=s) for s, d in splits.items()}
    # equal class counts: the same specs, so the spec fingerprint alone cannot tell them apart
    assert lists["train"].fingerprint() == lists["test"].fingerprint()
    learner = random_pruned_learner("maml", width=8, seed=1)
    res = {s: evaluate(learner, splits[s], lists[s], progress=False) for s in splits}
    assert res["test"].matches(lists["test"], learner)
    assert not res["test"].matches(lists["train"], learner)
    # a result written before the split was recorded is not reused for a list that records it
    legacy = EvalResult(res["test"].accuracies, res["test"].task_fingerprint, res["test"].steps,
                        {"model_digest": learner.digest()})
    assert not legacy.matches(lists["test"], learner)
    with pytest.raises(ValueError, match="tasks from one split: glyphs/train vs glyphs/test"):
        paired_difference(res["train"], res["test"])


HOLD = "import sys, time\nfrom metaprune.io import folder_lock\nwith folder_lock(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    time.sleep(600)\n"


def test_a_folder_in_use_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"in use by process {holder.pid}"), \
                folder_lock(tmp_path / "run"):
            pass
        assert main(["train", "--out", str(tmp_path / "run"), *TINY]) == 2
        assert "in use by process" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(tmp_path / "run"):  # the dead holder's lock is gone
        pass


def test_a_checkpoint_without_its_digest_is_refused(tmp_path):
    save_checkpoint(tmp_path / "m", random_pruned_learner("maml", width=8))
    doc = json.loads((tmp_path / "m.json").read_text())
    del doc["tensors_sha256"]
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="records no tensors_sha256"):
        load_checkpoint(tmp_path / "m")


# A training or pruning run killed (SIGKILL) at a chosen moment of its K-th checkpoint write,
# then resumed, must end with the weights (and masks) of an uninterrupted run, bit for bit.
KILL = textwrap.dedent("""
    import os, signal, sys
    import metaprune.checkpoint as ck
    moment, nth = sys.argv[1], int(sys.argv[2])
    saves = [0]
    real_replace, real_write_temp = os.replace, ck.write_temp
    def write_temp(path, write):
        tmp = real_write_temp(path, write)
        if moment == "after-first-temp" and str(path).endswith(".safetensors"):
            saves[0] += 1
            if saves[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return tmp
    def replace(a, b):
        real_replace(a, b)
        if moment == "between-renames" and str(b).endswith(".safetensors"):
            saves[0] += 1
            if saves[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
    ck.write_temp, ck.os.replace = write_temp, replace
    from metaprune.cli import main
    sys.exit(main(sys.argv[3:]))
    """)


def _train(out, moment: str = "none", nth: int = 0) -> int:
    cmd = [sys.executable, "-c", KILL, moment, str(nth), "train", "--out", str(out),
           "--set", "train.iterations=6", "--workers", "1", *TINY]
    env = {**os.environ, "METAPRUNE_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).returncode


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory) -> Path:
    """The uninterrupted training run every killed one must end at (one for all moments)."""
    ref = tmp_path_factory.mktemp("train_kill") / "ref"
    assert _train(ref) == 0
    return ref


@pytest.mark.parametrize("moment, nth", [("between-renames", 2), ("after-first-temp", 2),
                                         ("between-renames", 3)])
def test_train_killed_inside_a_checkpoint_write_resumes_bit_identical(train_reference, tmp_path,
                                                                      moment, nth):
    assert _train(tmp_path / "run", moment, nth) == -signal.SIGKILL
    t0 = time.time()
    assert _train(tmp_path / "run") == 0, "resume failed"
    assert time.time() - t0 < 300
    ref = load_checkpoint(train_reference / "model").learner.model.state_dict()
    got = load_checkpoint(tmp_path / "run" / "model").learner.model.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert not list((tmp_path / "run").glob(".*.tmp"))  # the next write cleaned up


PRUNE = ["--method", "anp", "--sparsity", "0.5", "--schedule", "0.25x2", "--retrain-iters", "4",
         "--checkpoint-every", "2", "--tasks", "2", "--val-tasks", "0", "--workers", "1",
         "--no-progress"]


STRUCTURED = ["--method", "anp-structured", "--sparsity", "0.75", "--rounds", "2",
              "--retrain-iters", "4", "--checkpoint-every", "2", "--tasks", "2", "--val-tasks",
              "0", "--workers", "1", "--no-progress"]


def _prune(dense, out, moment: str = "none", nth: int = 0, options=PRUNE) -> int:
    cmd = [sys.executable, "-c", KILL, moment, str(nth), "prune", str(dense), "--out", str(out),
           *options]
    env = {**os.environ, "METAPRUNE_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).returncode


@pytest.fixture(scope="module")
def dense_and_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune_kill")
    assert main(["train", "--out", str(root / "dense"), "--set", "train.iterations=4",
                 "--workers", "1", *TINY]) == 0
    assert _prune(root / "dense" / "model", root / "ref") == 0
    return root / "dense" / "model", root / "ref"


@pytest.mark.parametrize("moment, nth", [("between-renames", 1), ("after-first-temp", 2),
                                         ("between-renames", 4), ("after-first-temp", 5)])
def test_prune_killed_inside_a_checkpoint_write_resumes_bit_identical(dense_and_reference,
                                                                      tmp_path, moment, nth):
    dense, ref = dense_and_reference
    assert _prune(dense, tmp_path / "run", moment, nth) == -signal.SIGKILL
    assert _prune(dense, tmp_path / "run") == 0, "resume failed"
    a = load_checkpoint(ref / "round02").learner
    b = load_checkpoint(tmp_path / "run" / "round02").learner
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert a.masks.keys() == b.masks.keys()
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


@pytest.fixture(scope="module")
def structured_reference(dense_and_reference, tmp_path_factory) -> Path:
    ref = tmp_path_factory.mktemp("structured_kill") / "ref"
    assert _prune(dense_and_reference[0], ref, options=STRUCTURED) == 0
    return ref


@pytest.mark.parametrize("moment, nth", [("between-renames", 2), ("after-first-temp", 3)])
def test_structured_prune_killed_inside_a_checkpoint_write_resumes_bit_identical(
        dense_and_reference, structured_reference, tmp_path, moment, nth):
    dense, _ = dense_and_reference
    assert _prune(dense, tmp_path / "run", moment, nth, STRUCTURED) == -signal.SIGKILL
    assert _prune(dense, tmp_path / "run", options=STRUCTURED) == 0, "resume failed"
    a = load_checkpoint(structured_reference / "round02").learner.model.state_dict()
    b = load_checkpoint(tmp_path / "run" / "round02").learner.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _hostile_mpz(tmp_path, edit) -> Path:
    """A valid .mpz whose metadata ``edit`` changes (digest recomputed: a crafted file)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from metaprune.deploy.format import content_digest, mpz_from_learner, save_mpz

    path = save_mpz(tmp_path / "ok.mpz", mpz_from_learner(random_pruned_learner("maml",
                                                                                   width=4)))
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["mpz"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    index = tensors["index"].numpy().tobytes() if "index" in tensors else b""
    meta["content_sha256"] = content_digest(meta, tensors["values"].numpy(), index)
    bad = tmp_path / "bad.mpz"
    save_file(tensors, str(bad), metadata={"mpz": json.dumps(meta)})
    return bad


def test_model_files_cannot_make_the_runtime_run_forever_or_allocate_gigabytes(tmp_path):
    from metaprune.deploy.format import FormatError
    from metaprune.deploy.runtime import DeviceModel

    forever = _hostile_mpz(tmp_path, lambda m: m["rule"].update(steps=10**9))
    with pytest.raises(FormatError, match=r"bad.mpz': rule.steps must be an integer in "
                                          r"\[0, 10000\], got 1000000000"):
        DeviceModel.load(forever)
    # a 100000 x 100000 head declared by a file that stores a tiny model
    huge = _hostile_mpz(tmp_path, lambda m: m["model"]["kwargs"].update(n_way=100_000,
                                                                         width=100_000))
    t0 = time.time()
    with pytest.raises(FormatError, match="do not fit model 'conv4'"):
        DeviceModel.load(huge)
    assert time.time() - t0 < 5  # built on the meta device: nothing was allocated
    flipped = tmp_path / "flipped.mpz"
    data = bytearray((tmp_path / "ok.mpz").read_bytes())
    data[-10] ^= 0xFF  # one weight byte
    flipped.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="do not match the digest"):
        DeviceModel.load(flipped)


def test_restore_into_a_model_of_other_shapes_is_refused_before_any_copy(tmp_path):
    from metaprune.checkpoint import restore_checkpoint

    save_checkpoint(tmp_path / "w8", random_pruned_learner("maml", width=8))
    target = random_pruned_learner("maml", width=4, seed=3)
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore_checkpoint(target, tmp_path / "w8")
    assert all(torch.equal(before[k], v) for k, v in target.model.state_dict().items())


def test_structured_run_killed_in_its_first_round_resumes_only_into_the_same_run(tmp_path):
    from metaprune.pruning.structured import structured_anp

    class Interrupting:
        """The training stream, interrupted once the re-training has saved 'work'."""

        def __init__(self, stop_at: int | None):
            self.base = TaskSampler(glyphs("train", num_classes=10, samples_per_class=4),
                                    5, 1, 2)
            self.stop_at, self.calls = stop_at, 0

        def batch(self, start, size):
            self.calls += 1
            if self.stop_at is not None and self.calls == self.stop_at:
                raise KeyboardInterrupt
            return self.base.batch(start, size)

    dense = random_pruned_learner("maml", sparsity=0.0, width=8)
    opts = dict(rounds=2, retrain_iters=4, meta_batch=2, tasks=2, checkpoint_every=2,
                out_dir=tmp_path / "s", log=lambda m: None)
    with pytest.raises(KeyboardInterrupt):  # killed inside round 1's re-training
        structured_anp(copy.deepcopy(dense), Interrupting(stop_at=5), keep=0.5, **opts)
    assert (tmp_path / "s" / "state.json").exists() and (tmp_path / "s" / "work.json").exists()
    with pytest.raises(ValueError, match="other settings"):
        structured_anp(copy.deepcopy(dense), Interrupting(None), keep=0.75, **opts)
    resumed, _ = structured_anp(copy.deepcopy(dense), Interrupting(None), keep=0.5, **opts)
    fresh, _ = structured_anp(copy.deepcopy(dense), Interrupting(None), keep=0.5,
                              **{**opts, "out_dir": tmp_path / "ref"})
    a, b = resumed.model.state_dict(), fresh.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
