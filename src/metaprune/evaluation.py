"""Paired few-shot evaluation: a fixed task list, per-task accuracies, mean and 95% CI, and
the paired difference between two models evaluated on the same tasks."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.base import ClassDataset
from .data.tasks import TaskList, build_task
from .distributed import gather_in_order, is_main, shard_range
from .io import atomic_write_text
from .learners import Learner

Z95 = 1.959963984540054


def mean_ci95(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to summarise")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(Z95 * v.std(ddof=1) / math.sqrt(v.size))


@dataclass
class EvalResult:
    """Per-task accuracies on a fixed task list (``task_fingerprint`` identifies the list)."""

    accuracies: np.ndarray
    task_fingerprint: str
    steps: int
    meta: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return mean_ci95(self.accuracies)[0]

    @property
    def ci95(self) -> float:
        return mean_ci95(self.accuracies)[1]

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "ci95": self.ci95, "tasks": int(self.accuracies.size),
                "steps": self.steps, "task_fingerprint": self.task_fingerprint, **self.meta}

    def matches(self, tasks: TaskList, learner: Learner, steps: int | None = None) -> bool:
        """Whether this result is the evaluation of ``learner`` (same weights, masks and
        config) on ``tasks`` with ``steps`` test-time steps (default: the learner's): what a
        cached result must satisfy to be reused."""
        steps = learner.eval_inner_steps if steps is None else steps
        # strict: a result that does not record its split is not reused for a list that does
        return (self.task_fingerprint == tasks.fingerprint() and self.steps == steps
                and self.meta.get("model_digest") == learner.digest()
                and self.meta.get("tasks_source") == tasks.source)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps({**self.summary(),
                                            "per_task": self.accuracies.tolist()}))

    @staticmethod
    def load(path: str | os.PathLike) -> EvalResult:
        d = json.loads(Path(path).read_text())
        meta = {k: v for k, v in d.items()
                if k not in ("accuracy", "ci95", "tasks", "steps", "task_fingerprint",
                             "per_task")}
        return EvalResult(np.asarray(d["per_task"]), d["task_fingerprint"], d["steps"], meta)


def evaluate(learner: Learner, dataset: ClassDataset, tasks: TaskList, steps: int | None = None,
             device: str | torch.device = "cpu", progress: bool = True,
             desc: str = "evaluate") -> EvalResult:
    """Adapt to every task of ``tasks`` (test-time steps: ``steps`` or the learner's
    ``eval_inner_steps``) and record each task's query accuracy. Under torch.distributed each
    rank takes a contiguous share of the list and every rank gets all accuracies in order."""
    steps = learner.eval_inner_steps if steps is None else steps
    mine = shard_range(len(tasks))
    local = torch.empty(len(mine), dtype=torch.float64)
    for j, i in enumerate(tqdm(mine, desc=desc, disable=not (progress and is_main()),
                               dynamic_ncols=True)):
        task = build_task(dataset, tasks.specs[i]).to(device)
        local[j] = learner.evaluate_task(task, steps=steps)
    accs = gather_in_order(local, len(tasks)).numpy()
    meta = {"model_digest": learner.digest()}
    if tasks.source is not None:
        meta["tasks_source"] = tasks.source
    return EvalResult(accs, tasks.fingerprint(), steps, meta)


@dataclass
class PairedDifference:
    mean: float
    ci95: float
    tasks: int

    def __str__(self) -> str:
        return f"{100 * self.mean:+.2f} +- {100 * self.ci95:.2f} pts"


def paired_difference(a: EvalResult, b: EvalResult) -> PairedDifference:
    """Mean and 95% CI of per-task (a - b); both must come from the same task list."""
    if a.task_fingerprint != b.task_fingerprint or a.accuracies.size != b.accuracies.size:
        raise ValueError(f"paired comparison needs the same task list: fingerprints "
                         f"{a.task_fingerprint} ({a.accuracies.size} tasks) vs "
                         f"{b.task_fingerprint} ({b.accuracies.size} tasks)")
    sources = (a.meta.get("tasks_source"), b.meta.get("tasks_source"))
    if None not in sources and sources[0] != sources[1]:
        raise ValueError(f"paired comparison needs tasks from one split: {sources[0]} vs "
                         f"{sources[1]}")
    if a.steps != b.steps:
        raise ValueError(f"paired comparison needs the same number of adaptation steps: "
                         f"{a.steps} vs {b.steps}")
    m, ci = mean_ci95(a.accuracies - b.accuracies)
    return PairedDifference(m, ci, int(a.accuracies.size))
