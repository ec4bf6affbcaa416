"""NaN and inf are stopped where they appear, with the iteration, task, file or step named."""

from __future__ import annotations

import pytest
import torch
from helpers import random_pruned_learner

from metaprune.checkpoint import load_checkpoint, save_checkpoint
from metaprune.data.glyphs import glyphs
from metaprune.data.tasks import TaskSampler
from metaprune.deploy.format import FormatError, load_mpz, mpz_from_learner, save_mpz
from metaprune.deploy.runtime import DeviceModel
from metaprune.finite import NonFiniteError
from metaprune.training import last_iteration, meta_train


class PoisonedSampler:
    """The glyphs task stream with NaN images in task ``bad``."""

    def __init__(self, bad: int):
        self.base = TaskSampler(glyphs("train", num_classes=10, samples_per_class=4), 5, 1, 2,
                                seed=0)
        self.bad = bad

    def batch(self, start: int, size: int):
        tasks = self.base.batch(start, size)
        for i, t in enumerate(tasks):
            if start + i == self.bad:
                t.query_x = torch.full_like(t.query_x, float("nan"))
        return tasks


def test_meta_training_stops_at_the_diverging_task_with_weights_and_checkpoint_kept(tmp_path):
    learner = random_pruned_learner("maml", sparsity=0.0, width=8)
    ck = tmp_path / "model"
    with pytest.raises(NonFiniteError) as e:
        meta_train(learner, PoisonedSampler(bad=5), 4, 2, checkpoint_path=ck,
                   checkpoint_every=1, progress=False)
    msg = str(e.value)
    assert "iteration 3" in msg and "non-finite loss: [5]" in msg and "untouched" in msg
    assert last_iteration(ck) == 2
    saved = load_checkpoint(ck).learner.model.state_dict()
    for k, v in learner.model.state_dict().items():  # the failing step was not taken
        assert torch.equal(v, saved[k]), k


def test_a_step_that_makes_weights_non_finite_is_reported(tmp_path):
    learner = random_pruned_learner("maml", sparsity=0.0, width=8)
    learner.meta_lr = float("inf")  # (the config schema refuses it; a Python user may not)
    with pytest.raises(NonFiniteError, match=r"iteration 1: the meta-optimiser step made"):
        meta_train(learner, PoisonedSampler(bad=-1), 2, 2, progress=False)


def nan_learner():
    learner = random_pruned_learner("maml", width=8)
    with torch.no_grad():
        learner.model.head.weight[0, 0] = float("nan")
    return learner


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_file(tmp_path):
    save_checkpoint(tmp_path / "bad", nan_learner())
    with pytest.raises(NonFiniteError, match=r"checkpoint '.*bad.safetensors'.*head.weight"):
        load_checkpoint(tmp_path / "bad")


def test_an_mpz_with_nan_weights_is_refused(tmp_path):
    path = save_mpz(tmp_path / "m.mpz", mpz_from_learner(nan_learner()))
    with pytest.raises(FormatError, match=r"m.mpz'.*NaN or inf"):
        load_mpz(path)


def test_device_adaptation_rule_and_divergence_are_checked(tmp_path):
    mpz = load_mpz(save_mpz(tmp_path / "m.mpz",
                            mpz_from_learner(random_pruned_learner("maml", width=8))))
    for lr in (-0.4, 0.0, float("nan"), "0.4"):
        mpz.meta["rule"]["inner_lr"] = lr
        with pytest.raises(ValueError, match="inner_lr must be a finite number > 0"):
            DeviceModel(mpz, "m.mpz")
    mpz.meta["rule"]["inner_lr"] = 1e30
    dm = DeviceModel(mpz, "m.mpz")
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    with pytest.raises(NonFiniteError, match=r"adapting 'm.mpz' diverged.*after 3 step"):
        dm.adapt(x, y, steps=3)


def test_non_finite_gradients_with_a_finite_loss_stop_before_the_step():
    # ANIL adapts the head only: a NaN in the first layer's outer gradient leaves the
    # inner loop and the loss finite
    learner = random_pruned_learner("anil", sparsity=0.0, width=8)
    learner.model.features[0][0].weight.register_hook(lambda g: g * float("nan"))
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"iteration 1: the meta-gradient of "
                                             r"model.features.0.0.weight is not finite"):
        meta_train(learner, PoisonedSampler(bad=-1), 2, 2, progress=False)
    after = learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step was taken


def test_non_finite_pruning_scores_are_refused_naming_the_criterion():
    from metaprune.pruning.criteria import Magnitude, Scores
    from metaprune.pruning.pruner import prune_step

    class Broken(Magnitude):
        name = "broken"

        def score(self, learner, tasks, names, seed=0):
            s = super().score(learner, tasks, names, seed)
            s.scores[names[0]].view(-1)[0] = float("nan")
            return Scores(s.scores)

    learner = random_pruned_learner("maml", sparsity=0.0, width=8)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    masks = {k: v.clone() for k, v in learner.masks.items()}
    with pytest.raises(NonFiniteError, match="pruning scores of 'broken'"):
        prune_step(learner, Broken(), [], 0.5)
    assert all(torch.equal(masks[k], v) for k, v in learner.masks.items())
    assert all(torch.equal(before[k], v) for k, v in learner.model.state_dict().items())
