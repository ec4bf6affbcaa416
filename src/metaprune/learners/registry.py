"""Learner registry: ``build_learner("maml", model, inner_lr=0.4, ...)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

LEARNERS: dict[str, type] = {}


def register_learner(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        LEARNERS[name] = cls
        return cls

    return deco


def build_learner(name: str, model: nn.Module, **kwargs):
    if name not in LEARNERS:
        raise ValueError(f"unknown learner '{name}'; registered: {sorted(LEARNERS)}")
    kwargs.pop("name", None)
    try:
        return LEARNERS[name](model, **kwargs)
    except TypeError as e:
        raise ValueError(f"learner '{name}': bad arguments {kwargs}: {e}") from e
