"""Model registry: build a backbone from its name and keyword arguments (as stored in configs
and checkpoints), so a checkpoint can rebuild its own architecture."""

from __future__ import annotations

from collections.abc import Callable

import torch
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


# what a model spec read from a file may declare (a crafted depth of 10^8 would take minutes to
# build even on the meta device)
MAX_SPEC_INT = 100_000
MAX_SPEC_LIST = 64


def check_spec(kwargs: dict, where: str) -> None:
    """ValueError naming ``where`` unless every number in a model spec's keyword arguments is
    at most MAX_SPEC_INT and every list at most MAX_SPEC_LIST long (depth included)."""
    for key, value in kwargs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and len(value) > MAX_SPEC_LIST:
            raise ValueError(f"{where}: model kwargs '{key}' has {len(value)} entries (at most "
                             f"{MAX_SPEC_LIST})")
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not (
                    -MAX_SPEC_INT <= v <= MAX_SPEC_INT):
                raise ValueError(f"{where}: model kwargs '{key}' = {v} is out of range "
                                 f"(|value| <= {MAX_SPEC_INT})")
        if key == "depth" and isinstance(value, int) and value > MAX_SPEC_LIST:
            raise ValueError(f"{where}: model depth {value} is over {MAX_SPEC_LIST}")


def build_on_meta(name: str, kwargs: dict, where: str) -> nn.Module:
    """The architecture a file declares, bounded by :func:`check_spec` and built on PyTorch's
    meta device (shapes only, nothing allocated): what loaders compare stored tensors with."""
    check_spec(kwargs, where)
    with torch.device("meta"):
        return build_model(name, **kwargs)
