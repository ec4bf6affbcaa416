"""External speed anchor: MAML written with facebookresearch/higher (``pip install higher``).

This is the implementation a user might pick instead of metaprune's ``functional_call`` MAML.
It times meta-training iterations and test-time adaptation, and checks its meta-gradient
against a hand-written ``torch.func.functional_call`` MAML.

    python benchmarks/anchor_higher.py    # smoke run: Conv4-like model, random 5-way 1-shot

Notes on higher: with ``track_higher_grads=False`` the fast weights are detached after each
step, so ``query_loss.backward()`` reaches no meta-parameter; first-order MAML therefore takes
the query gradient w.r.t. the final fast weights and adds it to the meta-parameters' ``.grad``.
The model passed to the timing functions is deep-copied, so the caller's model is untouched.
"""

from __future__ import annotations

import copy
import time
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import higher
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def _maml_iteration(model: nn.Module, tasks: list[Any], inner_opt: torch.optim.Optimizer,
                    meta_opt: torch.optim.Optimizer, inner_steps: int, first_order: bool) -> None:
    """One outer step over the whole meta-batch (per-task loop, graphs freed task by task)."""
    meta_opt.zero_grad(set_to_none=True)
    params = list(model.parameters())
    n = len(tasks)
    for t in tasks:
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=not first_order) as (fmodel, diffopt):
            for _ in range(inner_steps):
                diffopt.step(F.cross_entropy(fmodel(t.support_x), t.support_y))
            query_loss = F.cross_entropy(fmodel(t.query_x), t.query_y) / n
            if first_order:
                grads = torch.autograd.grad(query_loss, list(fmodel.parameters()))
                for p, g in zip(params, grads):
                    p.grad = g.detach() if p.grad is None else p.grad + g.detach()
            else:
                query_loss.backward()
    meta_opt.step()


def higher_maml_seconds_per_iteration(model: torch.nn.Module, tasks: list, inner_lr: float,
                                      inner_steps: int, first_order: bool, iterations: int,
                                      meta_lr: float = 1e-3) -> float:
    """Mean wall seconds per MAML meta-iteration (``tasks`` is one meta-batch); one untimed
    warm-up iteration runs first. Trains a deep copy of ``model`` with Adam(meta_lr)."""
    model = copy.deepcopy(model)
    model.train()
    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
    meta_opt = torch.optim.Adam(model.parameters(), lr=meta_lr)
    _maml_iteration(model, tasks, inner_opt, meta_opt, inner_steps, first_order)  # warm-up
    t0 = time.perf_counter()
    for _ in range(iterations):
        _maml_iteration(model, tasks, inner_opt, meta_opt, inner_steps, first_order)
    return (time.perf_counter() - t0) / max(iterations, 1)


def _adapt_and_score(model: nn.Module, task: Any, inner_opt: torch.optim.Optimizer,
                     steps: int) -> float:
    """Test-time adaptation (no higher-order graph), then query accuracy."""
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                              track_higher_grads=False) as (fmodel, diffopt):
        with torch.enable_grad():
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(task.support_x), task.support_y))
        with torch.no_grad():
            logits = fmodel(task.query_x)
    return (logits.argmax(1) == task.query_y).float().mean().item()


def higher_eval_seconds_per_task(model: torch.nn.Module, tasks: list, inner_lr: float,
                                 steps: int) -> float:
    """Mean wall seconds per evaluation task: ``steps`` SGD steps on the support set, then
    query accuracy (one untimed warm-up task first)."""
    model = copy.deepcopy(model)
    model.train()  # MAML convention: BatchNorm on batch statistics at test time too
    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
    _adapt_and_score(model, tasks[0], inner_opt, steps)  # warm-up
    t0 = time.perf_counter()
    for t in tasks:
        _adapt_and_score(model, t, inner_opt, steps)
    return (time.perf_counter() - t0) / max(len(tasks), 1)


def check_against_functional(model: torch.nn.Module, task: Any, inner_lr: float) -> float:
    """Max abs difference between higher's second-order MAML meta-gradient (one task, one
    inner SGD step) and a hand-written ``functional_call`` MAML meta-gradient."""
    model = copy.deepcopy(model)
    model.train()
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())

    # reference: theta' = theta - lr * dL_s/dtheta (create_graph), then dL_q(theta')/dtheta
    support_loss = F.cross_entropy(functional_call(model, params, (task.support_x,)),
                                   task.support_y)
    grads = torch.autograd.grad(support_loss, list(params.values()), create_graph=True)
    adapted = {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads)}
    query_loss = F.cross_entropy(functional_call(model, adapted, (task.query_x,)), task.query_y)
    ref = torch.autograd.grad(query_loss, list(params.values()))

    # higher
    model.zero_grad(set_to_none=True)
    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                              track_higher_grads=True) as (fmodel, diffopt):
        diffopt.step(F.cross_entropy(fmodel(task.support_x), task.support_y))
        F.cross_entropy(fmodel(task.query_x), task.query_y).backward()
    got = dict(model.named_parameters())
    diff = 0.0
    for n, r in zip(names, ref):
        g = got[n].grad if got[n].grad is not None else torch.zeros_like(r)
        diff = max(diff, (g - r).abs().max().item())
    return diff


def conv4_like(width: int = 32, ways: int = 5, in_channels: int = 1) -> nn.Sequential:
    """4 x (conv3x3 - BatchNorm - ReLU - maxpool2) + linear head; 28x28 input -> 1x1 map.
    BatchNorm uses batch statistics only, as in metaprune's Conv4."""
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(4):
        layers += [nn.Conv2d(c, width, 3, padding=1),
                   nn.BatchNorm2d(width, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
        c = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width, ways))


def random_tasks(n: int, ways: int = 5, shots: int = 1, queries: int = 15, size: int = 28,
                 seed: int = 0) -> list[SimpleNamespace]:
    """Random ``ways``-way tasks with the support/query attribute layout used above."""
    g = torch.Generator().manual_seed(seed)

    def split(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(ways * k, 1, size, size, generator=g)
        return x, torch.arange(ways).repeat_interleave(k)

    out = []
    for _ in range(n):
        sx, sy = split(shots)
        qx, qy = split(queries)
        out.append(SimpleNamespace(support_x=sx, support_y=sy, query_x=qx, query_y=qy))
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = conv4_like()
    tasks = random_tasks(4)
    print(f"higher {version('higher')}, torch {torch.__version__}, 1 thread")
    print(f"meta-gradient max |higher - functional_call| = "
          f"{check_against_functional(net, tasks[0], inner_lr=0.4):.3e}")
    for fo in (False, True):
        s = higher_maml_seconds_per_iteration(net, tasks, inner_lr=0.4, inner_steps=1,
                                              first_order=fo, iterations=3)
        print(f"MAML {'first' if fo else 'second'}-order, meta-batch {len(tasks)}, 1 inner step: "
              f"{s * 1e3:.1f} ms/iteration")
    s = higher_eval_seconds_per_task(net, random_tasks(8, seed=1), inner_lr=0.4, steps=3)
    print(f"eval, 3 adaptation steps: {s * 1e3:.1f} ms/task")
