"""Glue from a config dict to objects: dataset splits, model + learner, fixed test tasks."""

from __future__ import annotations

from typing import Any

import torch

from .data.base import ClassDataset
from .data.registry import get_dataset
from .data.tasks import TaskList, TaskSampler
from .learners import Learner, build_learner
from .models import build_model


def load_split(data_cfg: dict, split_key: str = "train_split",
               root: str | None = None) -> ClassDataset:
    """Dataset split named by ``data_cfg[split_key]`` (``root`` overrides the config's)."""
    return get_dataset(data_cfg["dataset"], data_cfg[split_key],
                       root if root is not None else data_cfg.get("root"),
                       **(data_cfg.get("options") or {}))


def make_learner(cfg: dict, dataset: ClassDataset, device: str | torch.device = "cpu"
                 ) -> Learner:
    """Model sized to the data (channels, image size, N-way) wrapped in the configured learner."""
    c, h, _ = dataset.image_shape
    kwargs: dict[str, Any] = {"n_way": cfg["data"]["n_way"], "in_channels": c, "image_size": h}
    kwargs.update(cfg["model"].get("kwargs") or {})
    seed = int(cfg.get("train", {}).get("seed", 0))
    torch.manual_seed(seed)
    model = build_model(cfg["model"]["name"], **kwargs).to(device)
    lcfg = dict(cfg["learner"])
    return build_learner(lcfg.pop("name"), model, **lcfg)


def train_sampler(cfg: dict, dataset: ClassDataset) -> TaskSampler:
    d = cfg["data"]
    return TaskSampler(dataset, d["n_way"], d["k_shot"], d["q_query"],
                       seed=int(cfg["train"].get("seed", 0)), name=f"{d['dataset']}/"
                       f"{d['train_split']}")


def test_tasks(cfg: dict, dataset: ClassDataset, count: int | None = None,
               split: str | None = None) -> TaskList:
    """The FIXED evaluation task list: same config -> same tasks, for paired comparisons."""
    d, e = cfg["data"], cfg["eval"]
    count = int(e["tasks"] if count is None else count)
    seed = int(e["seed"])
    q = int(e.get("q_query", d["q_query"]))
    split = split or d["test_split"]
    sampler = TaskSampler(dataset, d["n_way"], d["k_shot"], q, seed=seed,
                          name=f"{d['dataset']}/{split}")
    return TaskList(sampler.fixed_specs(count),
                    {"dataset": d["dataset"], "split": split, "n_way": d["n_way"],
                     "k_shot": d["k_shot"], "q_query": q, "seed": seed})
