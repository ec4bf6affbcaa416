"""CAVIA: only the context adapts; exact meta-gradient through the context update; FiLM
generators are learner state (saved, never pruned)."""

from __future__ import annotations

import copy

import pytest
import torch

from metaprune.checkpoint import load_checkpoint, save_checkpoint
from metaprune.data.glyphs import glyphs
from metaprune.data.tasks import TaskSampler
from metaprune.deploy.format import FormatError, mpz_from_learner
from metaprune.learners import CAVIA, build_learner
from metaprune.models import build_model
from metaprune.pruning import prune


def tiny(dtype=torch.float32, **kw) -> CAVIA:
    torch.manual_seed(0)
    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=12).to(dtype)
    learner = build_learner("cavia", model, inner_lr=0.5, inner_steps=2, context_dim=6, **kw)
    learner.film.to(dtype)
    return learner


@pytest.fixture(scope="module")
def sampler():
    return TaskSampler(glyphs("train", num_classes=10, samples_per_class=4, image_size=12),
                       3, 1, 2)


def test_only_the_context_adapts_and_a_zero_context_is_the_backbone(sampler):
    learner = tiny()
    task = sampler.task(0)
    plain = build_learner("maml", copy.deepcopy(learner.model))  # no FiLM hooks
    with torch.no_grad():
        assert torch.equal(learner.forward(learner.params(), task.query_x),
                           plain.forward(plain.params(), task.query_x))
    adapted = learner.adapt(task.support_x, task.support_y)
    for n, p in learner.model.named_parameters():
        assert adapted.params[n] is p  # the weights are the meta-parameters, untouched
    assert adapted.params["context"].abs().sum() > 0
    assert learner.adapt_names == ["context"]


def test_meta_gradient_through_the_context_update_matches_finite_differences(sampler):
    learner = tiny(torch.float64)
    task = sampler.task(1).to("cpu")
    task.support_x, task.query_x = task.support_x.double(), task.query_x.double()

    def meta_loss() -> float:
        return learner.task_loss(task, create_graph=False)[0].item()

    loss, _ = learner.task_loss(task)
    named = learner.meta_parameters()
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()))))
    for name, idx in [("model.features.0.0.weight", (1, 0, 1, 2)),
                      ("model.head.weight", (2, 3)), ("film.b2_weight", (3, 4)),
                      ("film.b2_bias", (5,))]:
        p, eps = named[name], 1e-6
        with torch.no_grad():
            p[idx] += eps
        up = meta_loss()
        with torch.no_grad():
            p[idx] -= 2 * eps
        down = meta_loss()
        with torch.no_grad():
            p[idx] += eps
        fd = (up - down) / (2 * eps)
        assert grads[name][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), name
    assert abs(grads["film.b2_weight"]).sum() > 0


def test_save_load_prune_and_export(sampler, tmp_path):
    learner = tiny()
    learner.meta_step(sampler.batch(0, 2))
    prune(learner, sampler, method="anp", sparsity=0.5, schedule="one-shot", retrain_iters=2,
          meta_batch=2, tasks=2, progress=False)
    assert all(k.startswith("features.") or k.startswith("head.") for k in learner.masks)
    save_checkpoint(tmp_path / "c", learner)
    back = load_checkpoint(tmp_path / "c").learner
    assert isinstance(back, CAVIA) and back.context_dim == 6 and back.film_blocks == [2]
    for k, v in learner.extra_state().items():
        assert torch.equal(v, back.extra_state()[k]), k
    task = sampler.task(7)
    assert back.evaluate_task(task) == learner.evaluate_task(task)
    for n, m in back.masks.items():  # pruned weights still exactly 0
        assert float(dict(back.model.named_parameters())[n].detach()[m == 0].abs().max()) == 0
    with pytest.raises(FormatError, match="film"):  # the device format cannot hold it yet
        mpz_from_learner(back)


def test_bad_options_are_refused():
    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=12)
    with pytest.raises(ValueError, match="film_blocks"):
        build_learner("cavia", model, film_blocks=[7])
    with pytest.raises(ValueError, match="model.features"):
        build_learner("cavia", torch.nn.Linear(4, 3))
