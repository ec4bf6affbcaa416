"""Model registry: build a backbone from its name and keyword arguments (as stored in configs
and checkpoints), so a checkpoint can rebuild its own architecture."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = fn
        return fn

    return deco


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; registered: {sorted(MODELS)}")
    try:
        model = MODELS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"model '{name}': bad arguments {kwargs}: {e}") from e
    # remembered so that a checkpoint can rebuild the same architecture
    model.model_spec = {"name": name, "kwargs": dict(kwargs)}
    return model
