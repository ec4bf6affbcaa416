"""Accuracy-budgeted pruning (``prune --max-drop``) and the end-of-run validation check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaprune.checkpoint import load_checkpoint
from metaprune.cli import main
from metaprune.data.glyphs import glyphs
from metaprune.evaluation import EvalResult, evaluate, paired_difference
from metaprune.experiment import test_tasks as fixed_tasks
from metaprune.pruning.budget import ValidationPoint, advice, best_round, budget_exhausted

TINY = ["--set", "data.options={num_classes: 12, samples_per_class: 8, image_size: 12}",
        "--set", "data.q_query=3", "--set", "model.kwargs={width: 4}",
        "--set", "train.meta_batch=2", "--set", "eval.tasks=6", "--set", "eval.q_query=3",
        "--no-progress"]


def _point(rnd: int, sparsity: float, drop: float) -> ValidationPoint:
    return ValidationPoint(rnd, sparsity, 90.0 - drop, 1.0, drop, 0.5, f"round{rnd:02d}")


def test_best_round_is_the_sparsest_within_budget() -> None:
    curve = [_point(0, 0.0, 0.0), _point(1, 0.1, -0.2), _point(2, 0.5, 0.9), _point(3, 0.8, 1.4)]
    assert best_round(curve, 1.0).round == 2
    assert best_round(curve, 1.4).round == 3
    assert best_round(curve, -0.5) is None          # the dense model never counts


def test_budget_is_exhausted_only_after_patience_rounds_in_a_row_over_it() -> None:
    dense = _point(0, 0.0, 0.0)
    over, within = _point(1, 0.1, 1.5), _point(2, 0.2, 0.5)
    assert not budget_exhausted([dense], 1.0, 1)              # nothing pruned yet
    assert budget_exhausted([dense, over], 1.0, 1)
    assert not budget_exhausted([dense, over], 1.0, 2)
    assert not budget_exhausted([dense, over, within], 1.0, 2)    # a round back within resets
    assert budget_exhausted([dense, within, over, _point(3, 0.3, 1.1)], 1.0, 2)
    assert not budget_exhausted([dense, over, within, _point(3, 0.3, 1.1)], 1.0, 2)


def test_advice_names_the_setting_that_most_likely_helps() -> None:
    names = ["conv1.weight", "conv2.weight", "head.weight"]
    starved = {"conv1.weight": (1.4, 9), "head.weight": (0.6, 4)}
    hint = advice(starved, names, 100)
    assert "--exclude-first --exclude-last" in hint and "1.4 of its 9" in hint
    assert "--retrain-iters 200" in advice({}, names, 100)
    assert "--retrain-iters 240" in advice({}, names, 120)
    assert "lower --sparsity" in advice({}, names, 400)


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dense")
    assert main(["train", "--out", str(out), "--set", "train.iterations=30", *TINY]) == 0
    return out / "model"


def _validation(out: Path) -> dict:
    return json.loads((out / "validation.json").read_text())


def test_max_drop_stops_after_the_first_round_over_budget_and_names_the_best(
        dense, tmp_path, capsys) -> None:
    out = tmp_path / "p"
    cmd = ["prune", str(dense), "--method", "magnitude", "--retrain-iters", "0",
           "--max-drop", "0", "--patience", "1", "--val-tasks", "40", "--no-progress",
           "--out", str(out)]
    assert main(cmd) == 0
    doc = _validation(out)
    curve = doc["curve"]
    assert doc["split"] == "val" and curve[0]["round"] == 0 and doc["max_drop"] == 0
    # stopped at the first round that lost more than 0 points, and pruned no further
    over = [p["round"] for p in curve if p["round"] > 0 and p["drop"] > 0]
    assert over and over[0] == curve[-1]["round"]
    assert not (out / f"round{curve[-1]['round'] + 1:02d}.json").exists()
    assert curve[-1]["sparsity"] < 0.95
    best = doc["best"]
    ok = [p for p in curve[1:] if p["drop"] <= 0]
    assert (best is None) == (not ok)
    # every drop is the paired difference on the fixed validation tasks, recomputed here
    cfg = load_checkpoint(dense).meta["config"]
    val = glyphs("val", **cfg["data"]["options"])
    tasks = fixed_tasks(cfg, val, 40, "val")
    assert tasks.fingerprint() != EvalResult.load(dense.parent / "eval_test.json").task_fingerprint
    d = evaluate(load_checkpoint(dense).learner, val, tasks, progress=False)
    last = curve[-1]
    r = evaluate(load_checkpoint(last["checkpoint"]).learner, val, tasks, progress=False)
    assert last["drop"] == pytest.approx(100 * paired_difference(d, r).mean, abs=1e-9)
    text = capsys.readouterr().out
    if best is None:      # nothing within the budget: the final model is reported, with advice
        assert "warning: the pruned model" in text and "Most likely to help" in text
    else:                 # the round over budget is where pruning stopped, not a failure
        assert f"round {best['round']}" in text and "pruning stopped after round" in text
        assert "warning" not in text
    # the same command again resumes: nothing is pruned or evaluated anew
    stamps = {f: f.stat().st_mtime_ns for f in (out / "validation").iterdir()}
    assert main(cmd) == 0
    assert _validation(out) == doc
    assert {f: f.stat().st_mtime_ns for f in (out / "validation").iterdir()} == stamps


def test_patience_prunes_on_until_that_many_rounds_in_a_row_are_over_budget(dense,
                                                                            tmp_path) -> None:
    out = tmp_path / "p"
    cmd = ["prune", str(dense), "--method", "random", "--retrain-iters", "0", "--max-drop",
           "0", "--patience", "2", "--schedule", "0.1x9", "--sparsity", "0.9", "--val-tasks",
           "40", "--no-progress", "--out", str(out)]
    assert main(cmd) == 0
    curve = _validation(out)["curve"]
    over = [p["drop"] > 0 for p in curve[1:]]
    stopped_early = curve[-1]["round"] < 9
    assert over, "random pruning without re-training loses accuracy on some round"
    # never two rounds in a row over budget before the last two; stopped early only on those
    assert not any(a and b for a, b in zip(over[:-2], over[1:-1]))
    assert stopped_early == (len(over) >= 2 and over[-1] and over[-2])
    assert not (out / f"round{curve[-1]['round'] + 1:02d}.json").exists()
    assert _validation(out)["best"] == (max(
        (p for p in curve[1:] if p["drop"] <= 0), key=lambda p: p["sparsity"], default=None))


def test_generous_budget_prunes_to_the_end_and_picks_the_last_round(dense, tmp_path) -> None:
    out = tmp_path / "p"
    assert main(["prune", str(dense), "--method", "magnitude", "--retrain-iters", "0",
                 "--schedule", "0.3x3", "--sparsity", "0.9", "--max-drop", "100",
                 "--val-tasks", "10", "--no-progress", "--out", str(out)]) == 0
    doc = _validation(out)
    assert [p["round"] for p in doc["curve"]] == [0, 1, 2, 3]
    assert doc["best"]["round"] == 3 and doc["best"]["sparsity"] == pytest.approx(0.9, abs=0.01)


def test_end_of_run_check_reports_a_model_that_lost_too_much(dense, tmp_path, capsys) -> None:
    out = tmp_path / "p"
    assert main(["prune", str(dense), "--method", "random", "--sparsity", "0.95",
                 "--schedule", "one-shot", "--retrain-iters", "0", "--val-tasks", "40",
                 "--preset", "paper", "--no-progress", "--out", str(out)]) == 0
    doc = _validation(out)
    assert [p["round"] for p in doc["curve"]] == [0, 1] and doc["max_drop"] is None
    text = capsys.readouterr().out
    final = doc["curve"][1]
    assert final["drop"] > 1.0, "random 95% one-shot should lose more than a point"
    assert f"{final['accuracy']:.2f}%" in text and f"{doc['curve'][0]['accuracy']:.2f}%" in text
    assert "--exclude-first" in text              # 9 inputs per unit at 95% leave 0.5


def test_bad_budget_options_fail_before_any_work(dense, tmp_path, capsys) -> None:
    base = ["prune", str(dense), "--out", str(tmp_path / "p"), "--no-progress"]
    assert main([*base, "--max-drop", "-1"]) == 2
    assert "argument --max-drop: must be a finite number >= 0" in capsys.readouterr().err
    assert main([*base, "--max-drop", "1", "--val-split", "test"]) == 2
    assert "is the test split" in capsys.readouterr().err
    assert main([*base, "--max-drop", "1", "--val-split", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert main([*base, "--method", "anp-structured", "--max-drop", "1"]) == 2
    assert main([*base, "--patience", "2"]) == 2
    assert "--patience needs --max-drop" in capsys.readouterr().err
    assert main([*base, "--max-drop", "1", "--patience", "0"]) == 2
    assert main([*base, "--val-split", "test"]) == 2     # the guard never looks at test
    assert "is the test split" in capsys.readouterr().err
    assert not (tmp_path / "p" / "round01.json").exists()


def test_max_drop_refuses_a_run_folder_of_other_options(dense, tmp_path, capsys) -> None:
    out = tmp_path / "p"
    opts = ["--retrain-iters", "0", "--schedule", "0.5x1", "--sparsity", "0.5",
            "--val-tasks", "6", "--no-progress", "--out", str(out)]
    assert main(["prune", str(dense), "--method", "magnitude", *opts]) == 0
    capsys.readouterr()
    assert main(["prune", str(dense), "--method", "random", "--max-drop", "100", *opts]) == 2
    assert "another configuration" in capsys.readouterr().err
