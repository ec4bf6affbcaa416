"""Builders shared by several test files (imported as ``helpers``; pytest puts tests/ on the
path)."""

from __future__ import annotations

import torch

from metaprune.learners import Learner, build_learner
from metaprune.models import build_model


def random_pruned_learner(name: str = "maml", sparsity: float = 0.85, seed: int = 0,
                          inner_lr: float = 0.4, model: str = "conv4", **model_kw) -> Learner:
    """A learner on ``model`` (Conv4-32 unless ``model_kw`` says otherwise) with random masks
    of ``sparsity`` on every conv/linear weight; Meta-SGD gets non-constant learning rates."""
    torch.manual_seed(seed)
    net = build_model(model, **(model_kw or ({"width": 32} if model == "conv4" else {})))
    learner = build_learner(name, net, inner_lr=inner_lr, eval_inner_steps=3)
    if name == "metasgd":
        with torch.no_grad():
            for p in learner.lrs.values():
                p.uniform_(0.05, 0.5)
    g = torch.Generator().manual_seed(seed + 1)
    learner.set_masks({n: (torch.rand(p.shape, generator=g) >= sparsity).float()
                       for n, p in net.named_parameters() if p.dim() > 1})
    return learner


def central_difference(loss, tensor: torch.Tensor, idx: tuple, eps: float = 1e-6) -> float:
    """d loss() / d tensor[idx] by central finite differences (``tensor`` restored after)."""
    with torch.no_grad():
        tensor[idx] += eps
    up = loss()
    with torch.no_grad():
        tensor[idx] -= 2 * eps
    down = loss()
    with torch.no_grad():
        tensor[idx] += eps
    return (up - down) / (2 * eps)


def tiny_options(width: int) -> list[str]:
    """CLI overrides for a seconds-long glyphs run of a Conv4 with ``width`` channels."""
    return ["--set", "data.options={num_classes: 12, samples_per_class: 8, image_size: 12}",
            "--set", "data.q_query=3", "--set", f"model.kwargs={{width: {width}}}",
            "--set", "train.meta_batch=2", "--set", "eval.tasks=4", "--set", "eval.q_query=3",
            "--no-progress"]


def train_tiny(out, width: int):
    """``metaprune train`` for one iteration with :func:`tiny_options`; the checkpoint's path."""
    from metaprune.cli import main

    assert main(["train", "--out", str(out), "--set", "train.iterations=1",
                 *tiny_options(width)]) == 0
    return out / "model"


def structured_prune_args(checkpoint, sparsity: float) -> list[str]:
    """``metaprune prune`` arguments of a two-round anp-structured run of a tiny model."""
    return ["prune", str(checkpoint), "--method", "anp-structured", "--sparsity", str(sparsity),
            "--rounds", "2", "--retrain-iters", "1", "--meta-batch", "2", "--tasks", "2",
            "--no-progress"]
