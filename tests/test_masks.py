"""A pruned weight stays exactly 0: inner loop, outer Adam step, test-time adaptation."""

from __future__ import annotations

import pytest
import torch

from metaprune.data.glyphs import glyphs
from metaprune.data.tasks import TaskSampler
from metaprune.learners import build_learner
from metaprune.masks import format_sparsity_table, prunable_weights, sparsity_table, validate_masks
from metaprune.models import build_model

LEARNER_NAMES = ["maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "cavia"]


@pytest.fixture(scope="module")
def sampler() -> TaskSampler:
    return TaskSampler(glyphs("train", num_classes=12, samples_per_class=6, image_size=12),
                       n_way=3, k_shot=1, q_query=2, seed=0)


def random_masks(model, ratio: float = 0.6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: (torch.rand(params[n].shape, generator=g) >= ratio).float()
            for n in prunable_weights(model)}


def pruned_values(params: dict, masks: dict) -> list[float]:
    return [float(params[n].detach()[m == 0].abs().max()) for n, m in masks.items()
            if (m == 0).any()]


@pytest.mark.parametrize("name", LEARNER_NAMES)
def test_pruned_weights_stay_exactly_zero(name: str, sampler: TaskSampler) -> None:
    torch.manual_seed(0)
    model = build_model("conv4", n_way=3, in_channels=1, width=6, image_size=12)
    learner = build_learner(name, model, inner_lr=0.3, inner_steps=2, meta_lr=0.05)
    masks = random_masks(model)
    learner.set_masks(masks)
    assert max(pruned_values(dict(model.named_parameters()), masks)) == 0.0
    task = sampler.task(0)
    # inner loop (with graph, as in second-order meta-training) keeps zeros
    adapted = learner.adapt(task.support_x, task.support_y, create_graph=True)
    assert max(pruned_values(adapted.params, masks)) == 0.0
    # several outer Adam steps: weights AND optimiser moments stay 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for it in range(4):
        learner.meta_step(sampler.batch(it * 2, 2))
    params = dict(model.named_parameters())
    assert max(pruned_values(params, masks)) == 0.0
    state = learner.optimizer.state
    for n, m in masks.items():
        if params[n] not in state:  # ProtoNet never uses its head: no gradient, no state
            assert name == "protonet" and n.startswith("head.")
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            assert float(state[params[n]][key][m == 0].abs().max()) == 0.0, (n, key)
    # the surviving weights did train (moved from their values before the outer steps;
    # ProtoNet never uses its head)
    for n, m in masks.items():
        moved = bool((params[n].detach() != before[n])[m == 1].any())
        assert moved or (name == "protonet" and n.startswith("head.")), n
    # test-time adaptation with more steps keeps zeros
    adapted = learner.adapt(task.support_x, task.support_y, steps=5)
    assert max(pruned_values(adapted.params, masks)) == 0.0


def test_unmasked_adam_would_revive_pruned_weights(sampler: TaskSampler) -> None:
    """Control: zeroing weights without masking gradients lets training revive them, so the
    test above can fail."""
    torch.manual_seed(0)
    model = build_model("conv4", n_way=3, in_channels=1, width=6, image_size=12)
    learner = build_learner("maml", model, inner_lr=0.3, inner_steps=1, meta_lr=0.05)
    masks = random_masks(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    learner.meta_step(sampler.batch(0, 2))
    assert max(pruned_values(dict(model.named_parameters()), masks)) > 0.0


def test_sparsity_table_counts_exactly() -> None:
    model = build_model("conv4", n_way=5, in_channels=1, width=4, image_size=8)
    w = dict(model.named_parameters())["features.0.0.weight"]  # 4x1x3x3 = 36
    m = torch.ones_like(w)
    m.view(-1)[:9] = 0
    rows = sparsity_table(model, {"features.0.0.weight": m})
    assert rows[0] == {"name": "features.0.0.weight", "shape": [4, 1, 3, 3], "total": 36,
                       "pruned": 9, "sparsity": 0.25}
    total = sum(p.numel() for p in model.parameters())
    assert rows[-1]["total"] == total and rows[-1]["pruned"] == 9
    assert "25.00%" in format_sparsity_table(rows)


def test_bad_masks_are_named() -> None:
    model = build_model("conv4", n_way=5, in_channels=1, width=4, image_size=8)
    with pytest.raises(ValueError, match="nope.weight"):
        validate_masks(model, {"nope.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="head.weight.*shape"):
        validate_masks(model, {"head.weight": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="other than 0 and 1"):
        validate_masks(model, {"head.weight": torch.full_like(model.head.weight, 0.5)})


def test_learner_keeps_masks_in_the_models_parameter_order() -> None:
    """Masks arrive in any order (a checkpoint's tensors come back in an arbitrary one); the
    learner holds them in the model's order, the same on every rank of a distributed run."""
    model = build_model("conv4", n_way=3, in_channels=1, image_size=12, width=4)
    learner = build_learner("maml", model, inner_lr=0.4)
    masks = random_masks(model)
    learner.set_masks(dict(reversed(list(masks.items()))))
    assert list(learner.masks) == [n for n, _ in model.named_parameters() if n in masks]
    assert all(torch.equal(learner.masks[n], masks[n]) for n in masks)
