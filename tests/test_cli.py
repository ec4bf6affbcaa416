"""The command line end to end on tiny glyph data: train, resume, evaluate --json, demo."""

from __future__ import annotations

import io
import json

import pytest

from metaprune.cli import main

TINY = ["--set", "data.options={num_classes: 12, samples_per_class: 8, image_size: 12}",
        "--set", "data.q_query=3", "--set", "model.kwargs={width: 4}",
        "--set", "train.meta_batch=2", "--set", "train.checkpoint_every=2",
        "--set", "eval.tasks=12", "--set", "eval.q_query=3", "--no-progress"]




def test_train_resume_evaluate_json_and_compare(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "train.iterations=3", *TINY]) == 0
    doc = json.loads((out / "model.json").read_text())
    assert doc["iteration"] == 3 and doc["metrics"]["test"]["tasks"] == 12
    capsys.readouterr()
    # same command again: resumes from the finished checkpoint, trains nothing more
    assert main(["train", "--out", str(out), "--set", "train.iterations=3", *TINY]) == 0
    assert "resuming" in capsys.readouterr().err
    assert json.loads((out / "model.json").read_text())["iteration"] == 3

    assert main(["evaluate", str(out / "model"), "--json", "--save",
                 str(tmp_path / "a.json")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tasks"] == 12 and res["ci95"] > 0.0
    assert res["accuracy"] == pytest.approx(doc["metrics"]["test"]["accuracy"])
    # paired against itself: difference exactly 0
    assert main(["evaluate", str(out / "model"), "--json", "--compare",
                 str(tmp_path / "a.json")]) == 0
    diff = json.loads(capsys.readouterr().out)["paired_difference"]
    assert diff["mean"] == 0.0


def test_bad_inputs_give_clear_errors(tmp_path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "data.dataset=nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_demo_prints_dense_anp_magnitude_table(tmp_path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--iterations", "2",
                 "--retrain-iters", "1", "--tasks", "10", "--width", "4",
                 "--no-progress"]) == 0
    table = capsys.readouterr().out
    rows = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [r["model"] for r in rows] == ["dense", "anp", "magnitude"]
    assert rows[0]["sparsity"] == 0.0
    assert all(abs(r["sparsity"] - 0.85) < 0.005 for r in rows[1:])
    assert "paired diff vs dense" in table and "anp" in table
    # the same folder with another setting: refused, naming it (not the old dense accuracy),
    # before anything in it is written
    tasks_file = (tmp_path / "demo" / "test_tasks.json").read_bytes()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--iterations", "3",
                 "--retrain-iters", "1", "--tasks", "10", "--width", "4",
                 "--no-progress"]) == 2
    assert "train.iterations: 2 -> 3" in capsys.readouterr().err
    assert (tmp_path / "demo" / "test_tasks.json").read_bytes() == tasks_file


def test_demo_exclude_first_last_keeps_those_layers_dense(tmp_path) -> None:
    from metaprune.checkpoint import load_checkpoint
    from metaprune.masks import prunable_weights

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iterations", "2", "--retrain-iters", "1",
                 "--tasks", "10", "--width", "4", "--methods", "anp", "--exclude-first",
                 "--exclude-last", "--no-progress"]) == 0
    rows = {r["model"]: r for r in json.loads((out / "results.json").read_text())}
    learner = load_checkpoint(out / "anp" / "round09").learner
    names = prunable_weights(learner.model)
    params = dict(learner.model.named_parameters())
    first, last, inner = names[0], names[-1], names[1:-1]
    assert first not in learner.masks and last not in learner.masks
    assert bool((params[first] != 0).all()) and bool((params[last] != 0).all())
    removed = sum(int((learner.masks[n] == 0).sum()) for n in inner)
    inner_total = sum(params[n].numel() for n in inner)
    assert abs(removed / inner_total - 0.85) < 0.005  # exact per-layer counts, inner layers
    total = sum(params[n].numel() for n in names)
    assert rows["anp"]["sparsity"] == removed / total  # reported over ALL conv/linear weights
    assert rows["anp"]["sparsity"] < 0.85


@pytest.mark.parametrize("argv, flag, message", [
    (["evaluate", "ck", "--steps", "-1"], "--steps", "must be >= 0, got -1"),
    (["evaluate", "ck", "--tasks", "0"], "--tasks", "must be >= 1, got 0"),
    (["evaluate", "ck", "--threads", "0"], "--threads", "must be >= 1, got 0"),
    (["train", "--out", "o", "--workers", "-2"], "--workers", "must be >= 1, got -2"),
    (["train", "--out", "o", "--eval-tasks", "x"], "--eval-tasks", "expected an integer, got 'x'"),
    (["demo", "--sparsity", "1.5"], "--sparsity", "must be a finite number > 0 and < 1"),
    (["demo", "--iterations", "0"], "--iterations", "must be >= 1"),
    (["prune", "ck", "--sparsity", "0"], "--sparsity", "> 0 and < 1, got 0"),
    (["prune", "ck", "--max-drop", "nan"], "--max-drop", "must be a finite number >= 0"),
    (["prune", "ck", "--meta-batch", "0"], "--meta-batch", "must be >= 1"),
    (["prune", "ck", "--checkpoint-every", "0"], "--checkpoint-every", "must be >= 1"),
    (["prune", "ck", "--damping", "0"], "--damping", "> 0"),
    (["prune", "ck", "--patch-stride", "0"], "--patch-stride", "must be >= 1"),
    (["prune", "ck", "--retrain-iters", "-1"], "--retrain-iters", "must be >= 0"),
    (["adapt", "m.mpz", "--support", "s", "--query", "q", "--steps", "-3"], "--steps",
     "must be >= 0"),
    (["export-episode", "--out", "o", "--n-way", "1"], "--n-way", "must be >= 2"),
])
def test_numeric_flags_are_range_checked_naming_the_flag(argv, flag, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and message in err, err


def test_download_verifies_omniglot_and_explains_miniimagenet(tmp_path, capsys, monkeypatch):
    import metaprune.data.download as dl

    assert main(["download", "miniimagenet", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no official automatic download" in err and str(tmp_path) in err
    fetched = []

    class FakeResponse(io.BytesIO):  # the network is never used in tests
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(url, timeout):
        fetched.append(url)
        return FakeResponse(b"not the archive")

    monkeypatch.setattr(dl.urllib.request, "urlopen", urlopen)
    assert main(["download", "omniglot", str(tmp_path)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err and fetched
    assert not list((tmp_path / "omniglot").glob("*.zip"))  # a bad download is not kept
