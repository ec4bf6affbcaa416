"""A user's own criterion: registered with a decorator, its options passed through from
prune() and the command line."""

from __future__ import annotations

import json

import pytest
from helpers import random_pruned_learner

from metaprune.data.glyphs import glyphs
from metaprune.data.tasks import TaskSampler
from metaprune.pruning import prune
from metaprune.pruning.criteria import CRITERIA, Criterion, Scores, register_criterion
from metaprune.pruning.pruner import PruneConfig


@register_criterion("test-extreme")
class Extreme(Criterion):
    """Keeps the smallest weights (largest=True) or the largest ones: an option to pass."""

    name = "test-extreme"

    def __init__(self, largest: bool = False):
        self.largest = largest

    def score(self, learner, tasks, names, seed=0):
        p = learner.params()
        return Scores({n: (-1 if self.largest else 1) * p[n].detach().abs() for n in names})

    def options(self) -> dict:
        return {"largest": self.largest}


@pytest.fixture
def sampler():
    return TaskSampler(glyphs("train", num_classes=10, samples_per_class=4), 5, 1, 2)


@pytest.mark.parametrize("largest", [False, True])
def test_registered_criterion_gets_its_options_from_prune(sampler, largest):
    learner = random_pruned_learner("maml", sparsity=0.0, width=8)
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    prune(learner, sampler, method="test-extreme", sparsity=0.5, schedule="one-shot",
          retrain_iters=0, criterion_options={"largest": largest}, progress=False)
    for n, m in learner.masks.items():
        kept, pruned = before[n][m.bool()].abs(), before[n][~m.bool()].abs()
        if largest:   # the largest magnitudes were pruned
            assert pruned.min() >= kept.max()
        else:
            assert kept.min() >= pruned.max()


def test_unknown_criterion_options_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"method 'test-extreme' does not take options \['x'\]"):
        PruneConfig(method="test-extreme", criterion_options={"x": 1}).criterion()
    with pytest.raises(ValueError, match="unknown pruning method 'nosuch'"):
        PruneConfig(method="nosuch").criterion()


def test_fields_reach_only_criteria_that_take_them():
    cfg = PruneConfig(method="anp", damping=3e-3, seed=7)
    assert cfg.criterion().options()["damping"] == 3e-3
    assert PruneConfig(method="random", seed=7).criterion().seed == 7
    assert "test-extreme" in CRITERIA and isinstance(
        PruneConfig(method="magnitude", damping=1.0).criterion(), Criterion)


def test_cli_passes_criterion_options(tmp_path, capsys):
    from metaprune.checkpoint import save_checkpoint
    from metaprune.cli import main

    learner = random_pruned_learner("maml", sparsity=0.0, width=8)
    save_checkpoint(tmp_path / "dense", learner, {"data": {
        "dataset": "glyphs", "train_split": "train", "test_split": "test", "n_way": 5,
        "k_shot": 1, "q_query": 2, "options": {"num_classes": 10, "samples_per_class": 4}}})
    argv = ["prune", str(tmp_path / "dense"), "--method", "random", "--sparsity", "0.5",
            "--schedule", "one-shot", "--retrain-iters", "0", "--val-tasks", "0",
            "--no-progress", "--out", str(tmp_path / "p")]
    assert main([*argv, "--criterion-option", "seed=3"]) == 0
    state = json.loads((tmp_path / "p" / "state.json").read_text())
    assert state["config"]["criterion_options"] == {"seed": 3}
    assert main([*argv, "--criterion-option", "nope=1", "--out", str(tmp_path / "q")]) == 2
    assert "does not take options ['nope']" in capsys.readouterr().err
