"""Episodic N-way K-shot tasks: a deterministic sampler and fixed, saved task lists.

A task is fully described by a ``TaskSpec`` (which classes, which image indices), so a list
of specs can be saved as JSON and replayed: every method and checkpoint is then evaluated on
exactly the same tasks, which makes paired comparisons possible.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import ClassDataset, DataError


@dataclass(frozen=True)
class TaskSpec:
    """Classes (dataset indices, in label order) and per-class support/query image indices."""

    classes: tuple[int, ...]
    support: tuple[tuple[int, ...], ...]
    query: tuple[tuple[int, ...], ...]

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "support": [list(s) for s in self.support],
                "query": [list(q) for q in self.query]}

    @staticmethod
    def from_json(d: dict) -> TaskSpec:
        return TaskSpec(tuple(d["classes"]), tuple(tuple(s) for s in d["support"]),
                        tuple(tuple(q) for q in d["query"]))


@dataclass
class Task:
    """One episode. Labels are 0..N-1 in the order of ``spec.classes``."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    spec: TaskSpec | None = None

    @property
    def n_way(self) -> int:
        return int(self.support_y.max().item()) + 1

    def to(self, device: torch.device | str) -> Task:
        return Task(self.support_x.to(device), self.support_y.to(device),
                    self.query_x.to(device), self.query_y.to(device), self.spec)


class TaskSampler:
    """Draws N-way K-shot Q-query tasks from a ``ClassDataset``; task i depends on (seed, i)."""

    def __init__(self, dataset: ClassDataset, n_way: int, k_shot: int, q_query: int,
                 seed: int = 0, name: str = "dataset"):
        for label, v in (("n_way", n_way), ("k_shot", k_shot), ("q_query", q_query)):
            if not isinstance(v, int) or v < 1:
                raise DataError(f"{label} must be a positive integer, got {v!r}")
        dataset.check_episodes(n_way, k_shot + q_query, name)
        self.dataset = dataset
        self.n_way, self.k_shot, self.q_query, self.seed = n_way, k_shot, q_query, seed

    def spec(self, index: int) -> TaskSpec:
        rng = np.random.default_rng([self.seed, index])
        classes = rng.choice(self.dataset.num_classes, self.n_way, replace=False)
        support, query = [], []
        for c in classes:
            idx = rng.choice(self.dataset.class_size(int(c)), self.k_shot + self.q_query,
                             replace=False)
            support.append(tuple(int(i) for i in idx[: self.k_shot]))
            query.append(tuple(int(i) for i in idx[self.k_shot:]))
        return TaskSpec(tuple(int(c) for c in classes), tuple(support), tuple(query))

    def task(self, index: int) -> Task:
        return build_task(self.dataset, self.spec(index))

    def batch(self, start: int, size: int) -> list[Task]:
        return [self.task(start + i) for i in range(size)]

    def fixed_specs(self, count: int) -> list[TaskSpec]:
        return [self.spec(i) for i in range(count)]


class OffsetSampler:
    """A view of a sampler whose task ``i`` is the base sampler's task ``offset + i``: keeps
    streams of one sampler (dense training, re-training, scoring) apart without copying it."""

    def __init__(self, base: TaskSampler | OffsetSampler, offset: int):
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        self.base, self.offset = base, offset

    def batch(self, start: int, size: int) -> list[Task]:
        return self.base.batch(self.offset + start, size)


def build_task(dataset: ClassDataset, spec: TaskSpec) -> Task:
    if max(spec.classes) >= dataset.num_classes:
        raise DataError(f"task uses class {max(spec.classes)} but the dataset has only "
                        f"{dataset.num_classes} classes (task list made for another split?)")
    sx, sy, qx, qy = [], [], [], []
    for label, (c, s, q) in enumerate(zip(spec.classes, spec.support, spec.query)):
        imgs = dataset.images(c, list(s) + list(q))
        sx.append(imgs[: len(s)])
        qx.append(imgs[len(s):])
        sy += [label] * len(s)
        qy += [label] * len(q)
    return Task(torch.cat(sx), torch.tensor(sy), torch.cat(qx), torch.tensor(qy), spec)


class TaskList:
    """A fixed, saveable list of task specs (the evaluation set of a paired comparison)."""

    def __init__(self, specs: Sequence[TaskSpec], meta: dict | None = None):
        self.specs = list(specs)
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return len(self.specs)

    def tasks(self, dataset: ClassDataset) -> Iterator[Task]:
        for s in self.specs:
            yield build_task(dataset, s)

    @property
    def source(self) -> str | None:
        """``dataset/split`` the tasks were drawn from, when the list records it: equal specs
        drawn from two splits of equal size are different tasks."""
        if "dataset" in self.meta and "split" in self.meta:
            return f"{self.meta['dataset']}/{self.meta['split']}"
        return None

    def fingerprint(self) -> str:
        import hashlib

        blob = json.dumps([s.to_json() for s in self.specs], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        from ..io import atomic_write_text

        atomic_write_text(path, json.dumps(
            {"meta": self.meta, "tasks": [s.to_json() for s in self.specs]}))

    @staticmethod
    def load(path: str | os.PathLike) -> TaskList:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
            return TaskList([TaskSpec.from_json(t) for t in d["tasks"]], d.get("meta"))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"cannot read task list '{p}': {e}") from e
