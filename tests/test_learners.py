"""Meta-gradients against finite differences; every learner's contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import central_difference
from torch import nn

from metaprune.data.tasks import Task
from metaprune.learners import LEARNERS, build_learner


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def tiny_task(seed: int = 1, n_way: int = 3) -> Task:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(2 * n_way, 4, generator=g, dtype=torch.float64)
    qx = torch.randn(3 * n_way, 4, generator=g, dtype=torch.float64)
    return Task(sx, torch.arange(n_way).repeat(2), qx, torch.arange(n_way).repeat(3))


def meta_loss(learner, task: Task) -> float:
    with torch.enable_grad():
        loss, _ = learner.task_loss(task, create_graph=False)
    return loss.item()


def finite_difference(learner, task: Task, name: str, idx: tuple, eps: float = 1e-6) -> float:
    p = dict(learner.model.named_parameters())[name]
    return central_difference(lambda: meta_loss(learner, task), p, idx, eps)


ENTRIES = [("0.weight", (1, 2)), ("0.bias", (3,)), ("2.weight", (0, 5)), ("2.bias", (2,))]


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradient_matches_finite_differences(steps: int) -> None:
    learner = build_learner("maml", tiny_mlp(), inner_lr=0.5, inner_steps=steps)
    task = tiny_task()
    grad = learner.meta_gradient([task])
    for name, idx in ENTRIES:
        fd = finite_difference(learner, task, name, idx)
        assert grad[name][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-8), name


def test_first_order_maml_is_query_gradient_at_adapted_weights() -> None:
    """FOMAML's meta-gradient = grad of the query loss at theta' (Jacobian taken as I); it
    therefore differs from the exact (finite-difference) meta-gradient."""
    model = tiny_mlp()
    fo = build_learner("fomaml", model, inner_lr=0.5, inner_steps=1)
    task = tiny_task()
    g_fo = fo.meta_gradient([task])
    adapted = fo.adapt(task.support_x, task.support_y)
    fast = {n: p.detach().requires_grad_() for n, p in adapted.params.items()}
    q = F.cross_entropy(torch.func.functional_call(model, fast, (task.query_x,)), task.query_y)
    expected = dict(zip(fast, torch.autograd.grad(q, list(fast.values()))))
    worst_gap = 0.0
    for name, idx in ENTRIES:
        assert g_fo[name][idx].item() == pytest.approx(expected[name][idx].item(), rel=1e-10)
        fd = finite_difference(fo, task, name, idx)
        worst_gap = max(worst_gap, abs(g_fo[name][idx].item() - fd))
    assert worst_gap > 1e-4  # the second-order term is not negligible with lr 0.5


def test_zero_inner_steps_meta_gradient_is_plain_gradient() -> None:
    learner = build_learner("maml", tiny_mlp(), inner_lr=0.5, inner_steps=0)
    task = tiny_task()
    g = learner.meta_gradient([task])
    loss = F.cross_entropy(learner.model(task.query_x), task.query_y)
    plain = torch.autograd.grad(loss, list(learner.model.parameters()))
    for (n, _), gp in zip(learner.model.named_parameters(), plain):
        torch.testing.assert_close(g[n], gp)


def test_anil_adapts_only_the_head() -> None:
    from metaprune.models import build_model

    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=8)
    learner = build_learner("anil", model, inner_lr=0.5, inner_steps=2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)
    adapted = learner.adapt(x, torch.arange(3).repeat(2))
    for n, p in model.named_parameters():
        changed = not torch.equal(adapted.params[n], p)
        assert changed == n.startswith("head."), n


def test_metasgd_inner_rates_are_learned() -> None:
    learner = build_learner("metasgd", tiny_mlp(), inner_lr=0.3, inner_steps=1)
    before = {k: v.detach().clone() for k, v in learner.lrs.items()}
    learner.meta_step([tiny_task(1), tiny_task(2)])
    assert any(not torch.equal(before[k], v) for k, v in learner.lrs.items())


def test_metasgd_learned_rates_get_the_exact_meta_gradient() -> None:
    """d L_meta / d lr (Meta-SGD's per-weight inner learning rates) against central finite
    differences, through two inner steps."""
    learner = build_learner("metasgd", tiny_mlp(), inner_lr=0.3, inner_steps=2)
    with torch.no_grad():
        for p in learner.lrs.values():
            p.uniform_(0.1, 0.5, generator=torch.Generator().manual_seed(3))
    task = tiny_task()
    loss, _ = learner.task_loss(task, create_graph=True)
    grads = dict(zip(learner.lrs, torch.autograd.grad(loss, list(learner.lrs.values()))))
    for key, idx in [("0__weight", (1, 2)), ("2__bias", (0,)), ("2__weight", (2, 4))]:
        fd = central_difference(lambda: meta_loss(learner, task), learner.lrs[key], idx)
        assert grads[key][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), key
        assert abs(fd) > 1e-6  # the rate matters: the check is not 0 == 0


def test_reptile_outer_step_moves_towards_adapted_weights() -> None:
    model = tiny_mlp()
    learner = build_learner("reptile", model, inner_lr=0.1, inner_steps=3, meta_lr=1.0)
    learner.set_optimizer(torch.optim.SGD(model.parameters(), lr=1.0))
    task = tiny_task()
    target = learner.adapt(task.support_x, task.support_y).params
    target = {n: p.detach() for n, p in target.items()}
    learner.meta_step([task])  # SGD with lr 1 on (theta - theta') lands exactly on theta'
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), target[n])


def test_protonet_classifies_by_nearest_prototype() -> None:
    model = nn.Identity()
    model.register_parameter("dummy", nn.Parameter(torch.zeros(1)))
    learner = build_learner("protonet", model)
    sx = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    adapted = learner.adapt(sx, torch.tensor([0, 1, 2]))
    qx = torch.tensor([[9.0, 1.0], [1.0, 8.0], [0.5, 0.5]])
    assert learner.predict(adapted, qx).argmax(1).tolist() == [1, 2, 0]


def test_unknown_learner_is_named() -> None:
    with pytest.raises(ValueError, match="unknown learner 'mamll'"):
        build_learner("mamll", tiny_mlp())
    assert {"maml", "fomaml", "reptile", "anil", "metasgd", "protonet"} <= set(LEARNERS)
