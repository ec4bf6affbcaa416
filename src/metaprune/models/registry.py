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


# keyword argument of build_model (not passed to the builder): the shapes of the tensors that
# channel pruning shrank, {parameter or buffer name: shape}; see shrink_tensors
SLIM_KEY = "slim"


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; registered: {sorted(MODELS)}")
    build_kwargs = {k: v for k, v in kwargs.items() if k != SLIM_KEY}
    try:
        model = MODELS[name](**build_kwargs)
    except TypeError as e:
        raise ValueError(f"model '{name}': bad arguments {build_kwargs}: {e}") from e
    if kwargs.get(SLIM_KEY):
        shrink_tensors(model, kwargs[SLIM_KEY], f"model '{name}'")
    # remembered so that a checkpoint can rebuild the same architecture
    model.model_spec = {"name": name, "kwargs": dict(kwargs)}
    return model


# module attributes that describe the shape of a tensor (updated by shrink_tensors)
_SHAPE_ATTRS = {nn.Conv2d: ("out_channels", "in_channels"), nn.Linear: ("out_features",
                                                                     "in_features")}


def shrink_tensors(model: nn.Module, shapes: dict[str, list[int]], where: str) -> None:
    """Make ``model`` (just built at full width) the channel-pruned architecture ``shapes``
    describes: each named parameter / buffer is cut to its shape (a leading slice, then
    re-initialised by its module's ``reset_parameters``, so a fresh build is initialised like
    a native network of that width; a checkpoint's weights replace it anyway). Any registered
    architecture works: only tensor shapes are stored. ValueError naming the tensor if it
    does not exist or would grow."""
    if not isinstance(shapes, dict):
        raise ValueError(f"{where}: '{SLIM_KEY}' must map tensor names to shapes")
    modules = dict(model.named_modules())
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    touched: set[str] = set()
    for tname, shape in shapes.items():
        t = tensors.get(tname)
        if t is None:
            raise ValueError(f"{where}: '{SLIM_KEY}' names '{tname}', which is not a "
                             f"parameter or buffer of {type(model).__name__}")
        shape = [int(s) for s in shape]
        if len(shape) != t.dim() or any(not 0 < s <= d for s, d in zip(shape, t.shape,
                                                                         strict=True)):
            raise ValueError(f"{where}: '{SLIM_KEY}' shape {shape} of '{tname}' does not shrink "
                             f"its {list(t.shape)}")
        mname, _, attr = tname.rpartition(".")
        mod = modules[mname]
        cut = t.detach()[tuple(slice(0, s) for s in shape)].clone()
        setattr(mod, attr, nn.Parameter(cut, requires_grad=t.requires_grad)
                if isinstance(t, nn.Parameter) else cut)
        touched.add(mname)
    for mname in touched:
        mod = modules[mname]
        if hasattr(mod, "num_features"):  # BatchNorm and other per-channel norms
            mod.num_features = next(iter([*mod.parameters(False), *mod.buffers(False)])).shape[0]
        for cls, (out_attr, in_attr) in _SHAPE_ATTRS.items():
            if isinstance(mod, cls):
                setattr(mod, out_attr, mod.weight.shape[0])
                setattr(mod, in_attr, mod.weight.shape[1] * getattr(mod, "groups", 1))
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()


def slim_spec(model: nn.Module) -> dict:
    """The registry spec of ``model`` after its tensors were shrunk in place (channel pruning
    of a model built with :func:`build_model`): its own spec plus the shapes that differ from
    a full-width build (see :data:`SLIM_KEY`)."""
    spec = getattr(model, "model_spec", None)
    if not spec:
        raise ValueError(f"{type(model).__name__} has no registry spec (build it with "
                         "metaprune.models.build_model) so a pruned copy could not be rebuilt")
    base = {k: v for k, v in spec["kwargs"].items() if k != SLIM_KEY}
    full = build_on_meta(spec["name"], base, f"model '{spec['name']}'")
    ref = {**dict(full.named_parameters()), **dict(full.named_buffers())}
    now = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if set(ref) != set(now):
        raise ValueError(f"{type(model).__name__}: pruning changed its tensor names "
                         f"({sorted(set(ref) ^ set(now))[:4]}); it cannot be rebuilt")
    shapes = {n: list(t.shape) for n, t in now.items() if t.shape != ref[n].shape}
    return {"name": spec["name"], "kwargs": {**base, **({SLIM_KEY: shapes} if shapes else {})}}


# what a model spec read from a file may declare (a crafted depth of 10^8 would take minutes to
# build even on the meta device)
MAX_SPEC_INT = 100_000
MAX_SPEC_LIST = 64
MAX_SPEC_TENSORS = 10_000  # entries of a channel-pruned model's shapes (SLIM_KEY)


def check_spec(kwargs: dict, where: str) -> None:
    """ValueError naming ``where`` unless every number in a model spec's keyword arguments is
    at most MAX_SPEC_INT and every list at most MAX_SPEC_LIST long (depth included)."""
    slim = kwargs.get(SLIM_KEY)
    if slim is not None:
        if not isinstance(slim, dict) or len(slim) > MAX_SPEC_TENSORS or not all(
                isinstance(k, str) and isinstance(v, list) and len(v) <= 8
                and all(isinstance(d, int) and 0 < d <= MAX_SPEC_INT for d in v)
                for k, v in slim.items()):
            raise ValueError(f"{where}: model kwargs '{SLIM_KEY}' must map at most "
                             f"{MAX_SPEC_TENSORS} tensor names to shapes of positive integers "
                             f"<= {MAX_SPEC_INT}")
    for key, value in kwargs.items():
        if key == SLIM_KEY:
            continue
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
