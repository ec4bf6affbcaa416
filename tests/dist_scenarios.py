"""Run under ``torchrun --nproc-per-node N tests/dist_scenarios.py OUT`` (any N; ``main(OUT)`` in
the test process is world size 1) by
tests/test_distributed.py: every rank writes ``OUT/rank{r}.safetensors`` with the results of
the same work split over the N ranks, so the test can compare world sizes and ranks."""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from metaprune import distributed as mpdist
from metaprune.data.glyphs import glyphs
from metaprune.data.tasks import TaskList, TaskSampler
from metaprune.evaluation import evaluate
from metaprune.learners import build_learner
from metaprune.models import build_model
from metaprune.pruning.criteria import get_criterion
from metaprune.pruning.pruner import prune_step

LEARNERS = ("maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "cavia")


def learner_for(name: str, seed: int = 0):
    torch.manual_seed(seed)
    net = build_model("conv4", n_way=5, in_channels=1, image_size=12, width=8)
    return build_learner(name, net, inner_lr=0.4, eval_inner_steps=2)


def main(out: str) -> None:
    mpdist.apply_threads(1)
    mpdist.init_from_env("cpu")
    data = glyphs("train", num_classes=20, samples_per_class=8, image_size=12)
    sampler = TaskSampler(data, 5, 1, 3, seed=0)
    results: dict[str, torch.Tensor] = {}
    # meta-training: every learner, two steps of a meta-batch of 5 (uneven over 2 ranks)
    for name in LEARNERS:
        lr = learner_for(name)
        mine = mpdist.shard_range(5)
        for it in range(2):
            lr.meta_step(sampler.batch(it * 5 + mine.start, len(mine)), batch_size=5)
        for k, p in lr.meta_parameters().items():
            results[f"train.{name}.{k}"] = p.detach().clone()
    # evaluation: per-task accuracies of a fixed list, in task order
    lr = learner_for("maml")
    tasks = TaskList(sampler.fixed_specs(7))
    results["eval.maml"] = torch.as_tensor(evaluate(lr, data, tasks, progress=False).accuracies)
    # one pruning round of each criterion family: OBS (anp) and meta-gradient (taylor-meta)
    for method in ("anp", "taylor-meta"):
        lr = learner_for("maml", seed=1)
        masks, _ = prune_step(lr, get_criterion(method), sampler.batch(1000, 6), 0.5)
        for k, m in masks.items():
            results[f"prune.{method}.mask.{k}"] = m.clone()
        for k, p in lr.params().items():
            results[f"prune.{method}.weight.{k}"] = p.detach().clone()
    # a second round after the masks reached a rank in another order (as a checkpoint's tensors
    # do): the masks of equal shape must not be exchanged between layers on that rank
    lr = learner_for("maml", seed=2)
    prune_step(lr, get_criterion("anp"), sampler.batch(2000, 6), 0.3)
    if mpdist.rank() == 1:
        lr.masks = dict(reversed(list(lr.masks.items())))
    masks, _ = prune_step(lr, get_criterion("anp"), sampler.batch(3000, 6), 0.6)
    for k in masks:
        results[f"prune2.anp.mask.{k}"] = lr.masks[k].clone()
    save_file({k: v.contiguous() for k, v in results.items()},
              f"{out}/rank{mpdist.rank()}.safetensors")
    mpdist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
