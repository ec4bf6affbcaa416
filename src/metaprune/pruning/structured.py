"""Structured ANP on any architecture: remove whole channels, physically.

Channels are found and removed through Torch-Pruning's ``DependencyGraph``: a traced model
splits into pruning groups, sets of channels that must go together (in a ResNet-12 the output
channels of a block's ``conv3`` and of its shortcut are added, so they form one group with their
BatchNorms and the next block's ``conv1`` / shortcut inputs). Every group with at least one
Conv2d/Linear *consumer* (a layer reading its channels) and no path to the model's output is
prunable; the head's classes are not.

Saliency of a channel = channel-level OBS under the ADAPTED network (ANP's layer-wise Hessian,
:mod:`.hessian`, recorded while the learner runs on adapted tasks). Removing channel ``c`` removes,
in each consumer, the group ``Q_c`` of input columns fed by ``c`` (its k x k patch columns, or
its features for a Linear). For one consumer with weights ``W`` ``[out, d]`` (bias column last)
and ``Hinv = (H + lambda I)^-1`` the exact group-OBS cost and compensation are

    cost(c) = trace(W[:, Q] (Hinv[Q, Q])^-1 W[:, Q]^T)      (layer-output squared error)
    dW      = -W[:, Q] (Hinv[Q, Q])^-1 Hinv[Q, :]            (W[:, Q] becomes 0)

and after each removal ``Hinv <- Hinv - Hinv[:, Q] (Hinv[Q, Q])^-1 Hinv[Q, :]``. A group's cost
is the sum over its consumers; channels are removed greedily, cheapest first
(:class:`ChannelImportance` hands the order to Torch-Pruning as an importance). The removed
channels' producers (filters, BatchNorm entries) then no longer matter (their consumer columns
are 0): :func:`slim_model` deletes them with ``Group.prune`` and the slim model's outputs equal
the masked full-width model's (checked on every round, tested).

How many channels each group keeps: the same fraction in every group, or, under a memory budget
(``--memory-budget``), the widths :func:`allocate_widths` picks so that adaptation's activations
fit the budget at no more weights (:class:`WidthCosts` counts both exactly from the widths);
``--round-to N`` then makes every width a multiple of N at no more weights or activations
(:func:`round_widths`), for runtimes whose kernels prefer such channel counts.

Baselines with the same rounds, physical removal and re-meta-training (``channel_criterion``):
``l1`` removes the channels whose producer filters have the smallest L1 norm (summed over the
producers of a group), ``random`` removes random channels; neither compensates.

After surgery the slim model keeps its registry spec plus the shrunk tensor shapes
(:func:`metaprune.models.registry.slim_spec`), so checkpoints, ``.mpz`` export, the device
runtime and ONNX rebuild it without Torch-Pruning; masks and the meta-optimiser's moments are
carried over to the surviving entries. Learners with per-weight state (Meta-SGD, CAVIA) are not
supported. A model Torch-Pruning cannot trace (a forward that fails, a parameter used outside
its layer, a layer called functionally or twice) is refused with the layer's name.

    metaprune prune CHECKPOINT --method anp-structured --keep 0.5 --rounds 2 --out DIR

Every round is saved as ``DIR/roundNN`` with ``DIR/state.json``, and the re-training inside a
round checkpoints to ``DIR/work``: a killed run resumes.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from ..data.tasks import OffsetSampler
from ..learners import Learner, build_learner
from ..masks import PRUNABLE_TYPES, Masks
from ..models.registry import slim_spec
from .criteria import ANP, DEFAULT_H_DATA, DEFAULT_PATCH_STRIDE
from .hessian import damped_inverse, weight_matrix

LAYERS = PRUNABLE_TYPES  # the layers whose channels are produced and consumed


class UntraceableModelError(ValueError):
    """Torch-Pruning cannot trace the model's channels (the message names the layer)."""


@dataclass
class ChannelGroup:
    """Channels that are removed together. ``name``: its first producer layer (module order);
    ``producers`` / ``consumers``: Conv2d/Linear layer name -> for each channel of the group,
    its output rows / input indices in that layer."""

    name: str
    width: int
    producers: dict[str, list[list[int]]]
    consumers: dict[str, list[list[int]]]


@dataclass
class ChannelPlan:
    """Kept channels of every pruning group (sorted indices; groups in module order, named by
    ``groups``), per-group removal costs, and the input the model was traced with."""

    keep: list[list[int]]
    costs: list[list[float]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    example: torch.Tensor | None = field(default=None, repr=False)

    @property
    def widths(self) -> list[int]:
        return [len(k) for k in self.keep]


def example_input(model: nn.Module, tasks: Sequence = (), example: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """The input to trace ``model`` with: ``example``, else two support images of the first
    task, else a random batch shaped by ``model.config`` (``in_channels``, ``image_size``)."""
    if example is not None:
        return example
    if tasks:
        return tasks[0].support_x[:2]
    cfg = getattr(model, "config", {})
    if "in_channels" not in cfg or "image_size" not in cfg:
        raise ValueError(f"structured pruning needs an example input for "
                         f"{type(model).__name__} (pass example=..., or tasks)")
    dev = next(model.parameters()).device
    size = cfg["image_size"]
    return torch.rand(2, cfg["in_channels"], size, size, generator=torch.Generator()
                      .manual_seed(0)).to(dev)


def trace(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` (training mode is kept).
    :class:`UntraceableModelError` naming the layer when the forward fails, a parameter is used
    outside a layer Torch-Pruning knows, or a Conv2d/Linear/BatchNorm layer is not called
    exactly once by the forward."""
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}
    stack: list[nn.Module] = []
    calls: dict[nn.Module, int] = {}

    def pre(mod: nn.Module, _inputs: tuple) -> None:
        stack.append(mod)
        calls[mod] = calls.get(mod, 0) + 1

    def post(mod: nn.Module, _inputs: tuple, _out) -> None:
        stack.pop()

    handles = [h for m in model.modules()
               for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    was_training = model.training
    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example.detach().clone().requires_grad_(True),
                verbose=False)  # an input with grad: frozen layers are traced too
    except Exception as e:
        where = (f"its forward failed in layer '{names[stack[-1]]}' ({type(stack[-1]).__name__})"
                 if stack else "tracing failed")
        raise UntraceableModelError(f"structured pruning: Torch-Pruning cannot trace "
                                    f"{type(model).__name__}: {where}: {type(e).__name__}: "
                                    f"{e}") from e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    pname = {id(p): n for n, p in model.named_parameters()}
    bare = [pname[id(u.parameters)] for u in dg.unwrapped_parameters]
    if bare:
        raise UntraceableModelError(
            f"structured pruning: {type(model).__name__} uses parameter '{bare[0]}' outside a "
            "Conv2d/Linear/BatchNorm layer: Torch-Pruning cannot tell which of its channels "
            "belong to which pruning group")
    for m, n in names.items():
        if isinstance(m, (*LAYERS, nn.BatchNorm1d, nn.BatchNorm2d)) and (
                m not in dg.module2node or calls.get(m, 0) != 1):
            how = ("not called as a layer (its weight used directly, or not at all) by"
                   if m not in dg.module2node else f"called {calls.get(m, 0)} times in")
            raise UntraceableModelError(
                f"structured pruning: layer '{n}' ({type(m).__name__}) is {how} the forward "
                f"of {type(model).__name__}: Torch-Pruning cannot trace its channels")
    return dg


def _per_channel(item, width: int) -> list[list[int]]:
    """A group item's indices, split by the group's (root) channel."""
    out: list[list[int]] = [[] for _ in range(width)]
    for i, r in zip(item.idxs, item.root_idxs, strict=True):
        out[int(r)].append(int(i))
    return out


def channel_groups(model: nn.Module, example: torch.Tensor,
                   dg: tp.DependencyGraph | None = None) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` in module order (see the module docstring)."""
    dg = dg or trace(model, example)
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    order = {n: i for i, n in enumerate(modules)}
    groups = []
    for g in dg.get_all_groups(root_module_types=LAYERS):
        width = len(g[0].idxs)
        prod: dict[str, list[list[int]]] = {}
        cons: dict[str, list[list[int]]] = {}
        to_output = False
        for item in g:
            mod = item.dep.target.module
            to_output |= item.dep.target.type == tp.ops.OPTYPE.OUTPUT
            if not isinstance(mod, LAYERS):
                continue
            side = prod if dg.is_out_channel_pruning_fn(item.dep.handler) else cons
            side[names[mod]] = _per_channel(item, width)
        if to_output or not cons or not prod:
            continue
        for n in cons:
            mod = modules[n]
            if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                raise UntraceableModelError(f"structured pruning: layer '{n}' is a grouped "
                                            "convolution; only groups=1 is supported")
        first = min(prod, key=order.__getitem__)
        groups.append(ChannelGroup(first, width, prod, cons))
    return sorted(groups, key=lambda c: order[c.name])


def group_widths(model: nn.Module, example: torch.Tensor | None = None) -> list[int]:
    """Width of every prunable channel group of ``model`` (module order)."""
    return [g.width for g in channel_groups(model, example_input(model, (), example))]


def _columns(mod: nn.Module, idxs: list[int]) -> torch.Tensor:
    """Columns of ``weight_matrix(mod)`` fed by input channels / features ``idxs``."""
    per = mod.weight[0, 0].numel() if isinstance(mod, nn.Conv2d) else 1
    return torch.cat([torch.arange(j * per, (j + 1) * per) for j in idxs])


def group_obs_layers(layers: Sequence[tuple[torch.Tensor, torch.Tensor, Sequence[torch.Tensor]]],
                     n_remove: int) -> tuple[list[int], list[torch.Tensor], list[float]]:
    """Greedy exact group OBS over consumers read by the same channels: ``layers`` holds, per
    consumer, ``(W [out, d], Hinv, groups)`` with ``groups[c]`` the columns channel ``c``
    feeds. Removes ``n_remove`` channels, cheapest total cost first. Returns (removed channel
    ids in order, each consumer's compensated W with the removed columns exactly 0, cost of
    each removal)."""
    state = [[W.detach().double().clone(), h.double().clone(), g] for W, h, g in layers]
    alive = list(range(len(layers[0][2])))
    removed, costs = [], []
    for _ in range(n_remove):
        best = None
        for c in alive:
            invs, cost = [], 0.0
            for W, hinv, groups in state:
                Q = groups[c]
                inv = torch.linalg.inv(hinv[Q][:, Q])
                wq = W[:, Q]
                cost += float(torch.einsum("oq,qr,or->", wq, inv, wq))
                invs.append(inv)
            if best is None or cost < best[0]:
                best = (cost, c, invs)
        cost, c, invs = best
        for s, inv in zip(state, invs, strict=True):
            W, hinv, groups = s
            Q = groups[c]
            W = W - W[:, Q] @ inv @ hinv[Q, :]
            s[1] = hinv - hinv[:, Q] @ inv @ hinv[Q, :]
            W[:, Q] = 0.0
            s[0] = W
        alive.remove(c)
        removed.append(c)
        costs.append(cost)
    return removed, [s[0] for s in state], costs


def group_obs(W: torch.Tensor, hinv: torch.Tensor, groups: Sequence[torch.Tensor],
              n_remove: int) -> tuple[list[int], torch.Tensor, list[float]]:
    """:func:`group_obs_layers` for a single consumer."""
    removed, (Wc,), costs = group_obs_layers([(W, hinv, groups)], n_remove)
    return removed, Wc, costs


class ChannelImportance(tp.importance.Importance):
    """Torch-Pruning importance from precomputed per-channel scores (higher = keep), looked up
    by the group's first producer layer: how ANP's greedy OBS order, L1 norms or random
    scores reach Torch-Pruning."""

    def __init__(self, scores: dict[str, torch.Tensor], names: dict[nn.Module, str]):
        self.scores, self.names = scores, names

    def __call__(self, group) -> torch.Tensor:
        layers = [self.names[it.dep.target.module] for it in group
                  if isinstance(it.dep.target.module, LAYERS)]
        return next(self.scores[n] for n in layers if n in self.scores)


CHANNEL_CRITERIA = ("anp", "l1", "random")
# method names (metaprune prune --method, benchmarks) -> channel criterion
STRUCTURED_METHODS = {"anp-structured": "anp", "l1-structured": "l1",
                      "random-structured": "random"}


def _channel_scores(model: nn.Module, group: ChannelGroup, criterion: str,
                    generator: torch.Generator) -> torch.Tensor:
    """``l1`` (producer filters' L1 norm, summed over the group's producers) or ``random``
    scores of a group's channels (higher = keep)."""
    if criterion == "random":
        return torch.rand(group.width, generator=generator, dtype=torch.float64)
    params = dict(model.named_parameters())
    score = torch.zeros(group.width, dtype=torch.float64)
    for name, rows in group.producers.items():
        w = params[f"{name}.weight"].detach().abs().double()
        score += torch.stack([w[r].sum() for r in rows])
    return score


def plan_step(learner: Learner, tasks: Sequence, widths: Sequence[int],
              damping: float = 1e-4, h_data: str = DEFAULT_H_DATA, patch_stride: int = 1,
              compensate: bool = True, channel_criterion: str = "anp", seed: int = 0,
              example: torch.Tensor | None = None) -> tuple[ChannelPlan, Masks]:
    """One structured step in place on ``learner``: trace the channel groups, score channels
    (``anp``: group OBS of the consumers under the adapted network; ``l1``; ``random`` with
    ``seed``), keep ``widths[i]`` channels of group ``i``, compensate the consumers (anp: OBS)
    and set the equivalent masks (removed producer rows and consumer columns = 0). Returns the
    plan and the masks; :func:`slim_learner` then removes the channels physically."""
    model = learner.model
    if channel_criterion not in CHANNEL_CRITERIA:
        raise ValueError(f"channel criterion must be one of {CHANNEL_CRITERIA}, got "
                         f"'{channel_criterion}'")
    example = example_input(model, tasks, example)
    dg = trace(model, example)
    groups = channel_groups(model, example, dg)
    cur = [g.width for g in groups]
    if len(widths) != len(cur) or any(not 1 <= w <= c for w, c in zip(widths, cur, strict=True)):
        raise ValueError(f"target widths {list(widths)} must be 1..{cur} per channel group "
                         f"({[g.name for g in groups]})")
    obs = channel_criterion == "anp"
    consumers = [c for g in groups for c in g.consumers]
    H = (ANP(h_data=h_data, damping=damping, patch_stride=patch_stride).hessians(
        learner, tasks, [f"{c}.weight" for c in consumers]) if obs else {})
    unseen = [c for c in consumers if obs and f"{c}.weight" not in H]
    if unseen:
        raise ValueError(f"anp-structured: layer '{unseen[0]}' reads pruned channels but saw no "
                         f"input while learner '{learner.name}' adapted and predicted (a layer "
                         "it does not use); use channel_criterion 'l1' or 'random'")
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    scores: dict[str, torch.Tensor] = {}
    costs: list[list[float]] = []
    for g, width in zip(groups, widths, strict=True):
        n_remove = g.width - width
        if not obs:
            scores[g.name] = _channel_scores(model, g, channel_criterion, gen)
            costs.append(sorted(scores[g.name].tolist())[:n_remove])
            continue
        layers = [(weight_matrix(modules[c]).detach(),
                   damped_inverse(H[f"{c}.weight"], damping),
                   [_columns(modules[c], idxs) for idxs in cols])
                  for c, cols in g.consumers.items()]
        removed, compensated, cst = group_obs_layers(layers, n_remove)
        costs.append(cst)
        order = torch.full((g.width,), float(g.width), dtype=torch.float64)
        order[removed] = torch.arange(n_remove, dtype=torch.float64)  # removed first: lowest
        scores[g.name] = order
        if compensate:
            with torch.no_grad():
                for c, Wc in zip(g.consumers, compensated, strict=True):
                    mod = modules[c]
                    k = mod.weight[0].numel()
                    mod.weight.copy_(Wc[:, :k].reshape(mod.weight.shape).to(mod.weight.dtype))
                    if mod.bias is not None:
                        mod.bias.copy_(Wc[:, k].to(mod.bias.dtype))
    importance = ChannelImportance(scores, {m: n for n, m in modules.items()})
    keep = []
    masks = dict(learner.masks)
    params = dict(model.named_parameters())
    for g, width, tp_group in zip(groups, widths, _tp_groups(dg, model, groups), strict=True):
        imp = importance(tp_group)
        removed = torch.argsort(imp, stable=True)[: g.width - width].tolist()
        keep.append(sorted(set(range(g.width)) - set(removed)))
        for side, dim in ((g.producers, 0), (g.consumers, 1)):
            for name, idxs in side.items():
                pn = f"{name}.weight"
                m = masks.get(pn, torch.ones_like(params[pn])).clone()
                gone = torch.tensor([i for c in removed for i in idxs[c]], dtype=torch.long)
                m.index_fill_(dim, gone, 0.0)
                masks[pn] = m
    learner.set_masks(masks)
    return ChannelPlan(keep, costs, [g.name for g in groups], example), masks


def _tp_groups(dg: tp.DependencyGraph, model: nn.Module, groups: Sequence[ChannelGroup]):
    """Torch-Pruning's full group of each of ``groups`` (rooted at its first producer)."""
    modules = dict(model.named_modules())
    for g in groups:
        root = modules[g.name]
        yield dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels,
                                   list(range(g.width)))


def slim_model(model: nn.Module, plan: ChannelPlan) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Physically remove the channels not in ``plan.keep`` from a copy of ``model`` with
    Torch-Pruning's ``Group.prune``. Returns the slim model (its registry spec records the
    shrunk shapes) and, for every parameter and floating buffer, the flat indices of its
    surviving entries in the full-width tensor (what masks and optimiser moments are gathered
    with)."""
    slim = copy.deepcopy(model)
    example = example_input(slim, (), plan.example)
    dg = trace(slim, example)
    groups = channel_groups(slim, example, dg)
    if (plan.groups and plan.groups != [g.name for g in groups]) or len(plan.keep) != len(
            groups) or any(k and max(k) >= g.width for g, k in zip(groups, plan.keep)):
        raise ValueError(f"the plan (groups {plan.groups}, widths {plan.widths}) does not fit "
                         f"this model's channel groups {[g.name for g in groups]}")
    # trace with real values, then let Torch-Pruning cut tensors of indices: what survives of
    # each tensor is read off directly
    modules = dict(slim.named_modules())
    full: dict[str, torch.Tensor] = {}
    grad: dict[str, bool] = {}
    for name, t in [*slim.named_parameters(), *slim.named_buffers()]:
        if not t.is_floating_point():
            continue
        mname, _, attr = name.rpartition(".")
        full[name], grad[name] = t.detach().clone(), t.requires_grad
        ids = torch.arange(t.numel(), dtype=torch.float64, device=t.device).reshape(t.shape)
        setattr(modules[mname], attr, nn.Parameter(ids, t.requires_grad)
                if isinstance(t, nn.Parameter) else ids)
    for g, kept in zip(groups, plan.keep, strict=True):
        gone = sorted(set(range(g.width)) - set(kept))
        if gone:
            root = modules[g.name]
            dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels,
                                 gone).prune()
    index: dict[str, torch.Tensor] = {}
    for name, ids in [*slim.named_parameters(), *slim.named_buffers()]:
        if name not in full:
            continue
        mname, _, attr = name.rpartition(".")
        index[name] = ids.detach().long().flatten()
        t = full[name].flatten()[index[name]].reshape(ids.shape)
        setattr(modules[mname], attr, nn.Parameter(t, grad[name])
                if isinstance(ids, nn.Parameter) else t)
    slim.model_spec = slim_spec(slim)
    return slim, index


def check_equivalent(masked: nn.Module, slim: nn.Module, example: torch.Tensor) -> None:
    """UntraceableModelError unless ``slim`` computes what the masked full-width model does
    on ``example`` (a safety net for operations Torch-Pruning maps wrongly)."""
    with torch.no_grad():
        a, b = masked(example), slim(example)
    diff = float((a - b).abs().max()) if a.shape == b.shape else math.inf
    if not diff <= 1e-4 * (1.0 + float(a.abs().max())):
        raise UntraceableModelError(
            f"structured pruning: the slim {type(slim).__name__} does not compute what the "
            f"masked one does (max difference {diff:.3g}): Torch-Pruning mapped one of its "
            "operations' channels wrongly")


def slim_learner(learner: Learner, plan: ChannelPlan) -> Learner:
    """A learner of the same kind around the slim model (:func:`slim_model`), checked to
    compute what ``learner`` (masked by :func:`plan_step`) does; its masks and meta-optimiser
    moments are those of the surviving entries (masks that keep everything are dropped)."""
    if learner.extra_state():
        raise NotImplementedError(f"structured pruning does not support learner "
                                  f"'{learner.name}' (per-weight state)")
    slim, index = slim_model(learner.model, plan)
    check_equivalent(learner.model, slim, example_input(slim, (), plan.example))
    cfg = learner.config()
    out = build_learner(cfg.pop("name"), slim, **cfg)
    params = dict(slim.named_parameters())

    def gather(name: str, t: torch.Tensor) -> torch.Tensor:
        return t.flatten()[index[name].to(t.device)].reshape(params[name].shape)

    masks = {n: gather(n, m) for n, m in learner.masks.items()}
    out.set_masks({n: m for n, m in masks.items() if not bool(m.all())})
    sd = learner.optimizer_state()
    if sd is not None:
        full = dict(learner.model.named_parameters())
        names = [n[len("model."):] for n in learner.meta_parameters()]
        state = {i: {k: gather(names[i], v) if torch.is_tensor(v) and v.shape == full[
            names[i]].shape else v for k, v in st.items()} for i, st in sd["state"].items()}
        out.load_optimizer_state({"state": state,
                                  "param_groups": copy.deepcopy(sd["param_groups"])})
    return out


def schedule(widths: Sequence[int], keep: float | Sequence[float], rounds: int
             ) -> list[list[int]]:
    """Per-round target widths shrinking geometrically to ``round(keep * width)``; ``keep``
    is one fraction for every group or one per group."""
    keeps = [float(keep)] * len(widths) if isinstance(keep, Real) else list(keep)
    if len(keeps) != len(widths) or rounds < 1 or not all(0 < k <= 1 for k in keeps):
        raise ValueError(f"keep must be in (0, 1] (one or one per group) and rounds >= 1, "
                         f"got {keep}, {rounds}")
    return [[max(1, int(math.floor(w * k ** (r / rounds) + 0.5))) for w, k in zip(widths, keeps)]
            for r in range(1, rounds + 1)]


def activation_bytes(model: nn.Module, batch: torch.Tensor) -> int:
    """Bytes of every leaf module's output in one forward pass of ``batch`` (a module called
    twice counts twice): what adaptation keeps for its backward pass, in-place operations
    aside."""
    sizes: list[int] = []

    def record(_mod: nn.Module, _inputs: tuple, out) -> None:
        outs = out if isinstance(out, (tuple, list)) else (out,)
        sizes.extend(t.numel() * t.element_size() for t in outs if torch.is_tensor(t))

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    return sum(sizes)


def layer_weight_count(model: nn.Module) -> int:
    """Weights and biases of ``model``'s Conv2d/Linear layers (what :class:`WidthCosts` counts)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, LAYERS)
               for p in m.parameters(recurse=False))


@dataclass
class LayerShape:
    """A Conv2d/Linear layer's weight as a matrix of ``rows x cols`` blocks of ``per`` entries
    (a conv's kernel size), a bias of ``rows`` if it has one, and the rows / columns each channel
    of a group owns: ``row_groups`` / ``col_groups`` = [(group index, entries per channel)]."""

    rows: int
    cols: int
    per: int
    bias: bool
    row_groups: list[tuple[int, int]]
    col_groups: list[tuple[int, int]]


@dataclass
class WidthCosts:
    """How a model's size follows its channel groups' widths: the weights of its Conv2d/Linear
    layers (biases included) are bilinear in the widths, its activations (:func:`activation_bytes`
    of the example batch) linear; ``activation_per_channel`` is measured by removing one channel
    of each group (:func:`slim_model`)."""

    full: list[int]
    layers: list[LayerShape]
    activation_full: int
    activation_per_channel: list[int]

    @classmethod
    def measure(cls, model: nn.Module, example: torch.Tensor) -> WidthCosts:
        groups = channel_groups(model, example)
        full = [g.width for g in groups]
        layers = []
        for name, mod in model.named_modules():
            if not isinstance(mod, LAYERS):
                continue
            w = mod.weight
            layers.append(LayerShape(
                w.shape[0], w.shape[1], w[0, 0].numel(), mod.bias is not None,
                [(i, len(g.producers[name][0])) for i, g in enumerate(groups)
                 if name in g.producers],
                [(i, len(g.consumers[name][0])) for i, g in enumerate(groups)
                 if name in g.consumers]))
        base = activation_bytes(model, example)
        per = []
        for i in range(len(groups)):
            keep = [list(range(h.width)) for h in groups]
            keep[i] = keep[i][1:]
            slim, _ = slim_model(model, ChannelPlan(keep, example=example))
            per.append(base - activation_bytes(slim, example))
        return cls(full, layers, base, per)

    def weights(self, widths: Sequence[int]) -> int:
        """Weights (and biases) of the Conv2d/Linear layers at ``widths``."""
        total = 0
        for lay in self.layers:
            rows = lay.rows - sum(n * (self.full[g] - widths[g]) for g, n in lay.row_groups)
            cols = lay.cols - sum(n * (self.full[g] - widths[g]) for g, n in lay.col_groups)
            total += rows * cols * lay.per + (rows if lay.bias else 0)
        return total

    def activations(self, widths: Sequence[int]) -> int:
        """Activation bytes of the example batch at ``widths``."""
        return self.activation_full - sum(a * (f - w) for a, f, w in zip(
            self.activation_per_channel, self.full, widths))


def allocate_widths(model: nn.Module, example: torch.Tensor, keep: float,
                    memory: float | None = None, round_to: int | None = None) -> list[int]:
    """Final width of every channel group: ``round(keep * width)`` in each (uniform); with
    ``memory`` (a fraction of the full model's activation bytes, what adaptation keeps for its
    backward pass), the widths change as little as it takes to meet it: one channel at a time
    goes from the group holding the most activation bytes per weight that channel frees (so the
    early, high-resolution groups shrink together, none first to a bottleneck), never below
    half its uniform width;
    then channels come back one at a time to the groups that cost the fewest activation bytes
    per weight regained (late, low-resolution ones) while both the uniform widths' Conv2d/Linear
    weight count and the memory budget hold. ``round_to``: then every width becomes a multiple
    of it or its group's full width (:func:`round_widths`) at no more weights and activations.
    ``ValueError`` when the floors exceed the memory budget or no rounding fits."""
    full = [g.width for g in channel_groups(model, example)]
    widths = schedule(full, keep, 1)[0]
    if memory is None and round_to is None:
        return widths
    if memory is not None and not 0 < memory <= 1:
        raise ValueError(f"--memory-budget must be a fraction in (0, 1], got {memory}")
    cost = WidthCosts.measure(model, example)
    budget = cost.weights(widths)
    if memory is not None:
        widths = _fit_memory(cost, widths, budget, memory, keep)
    return widths if round_to is None else round_widths(cost, widths, round_to, budget)


def _fit_memory(cost: WidthCosts, widths: list[int], budget: int, memory: float,
                keep: float) -> list[int]:
    """:func:`allocate_widths`'s memory allocation of the uniform ``widths`` of ``keep``."""
    widths, full = list(widths), cost.full
    target = memory * cost.activation_full
    floors = [max(1, (w + 1) // 2) for w in widths]
    held = cost.activation_per_channel

    def freed(g: int, step: int) -> int:  # weights one channel more (+1) / less (-1) of g moves
        moved = list(widths)
        moved[g] += step
        return abs(cost.weights(moved) - cost.weights(widths))

    while cost.activations(widths) > target:
        live = [g for g in range(len(widths)) if widths[g] > floors[g]]
        if not live:
            reach = cost.activations(floors) / cost.activation_full
            raise ValueError(f"--memory-budget {memory:g} (of the full model's activations) is "
                             f"out of reach at keep {keep:.3f}: half the uniform widths still "
                             f"hold {reach:.3f} (prune more, or allow more memory)")
        widths[max(live, key=lambda g: held[g] * widths[g] / max(freed(g, -1), 1))] -= 1
    while True:
        fits = []
        for g in range(len(widths)):
            if widths[g] == full[g]:
                continue
            widths[g] += 1
            if cost.weights(widths) <= budget and cost.activations(widths) <= target:
                fits.append(g)
            widths[g] -= 1
        if not fits:
            return widths
        widths[min(fits, key=lambda g: held[g] / max(freed(g, 1), 1))] += 1


def rounding_choices(width: int, full: int, multiple: int) -> list[int]:
    """The widths ``width`` may be rounded to: the nearest allowed value below it and above it
    (allowed: the multiples of ``multiple`` up to ``full``, and ``full``); one if it is
    allowed."""
    allowed = sorted({*range(multiple, full + 1, multiple), full})
    below = [v for v in allowed if v <= width] or allowed[:1]
    above = [v for v in allowed if v >= width] or allowed[-1:]
    return sorted({below[-1], above[0]})


def round_widths(cost: WidthCosts, widths: Sequence[int], multiple: int, budget: int
                 ) -> list[int]:
    """``widths`` rounded to multiples of ``multiple`` (a group's full width is allowed too),
    each down or up to the nearest allowed value (:func:`rounding_choices`), with no more
    Conv2d/Linear weights than ``budget`` and no more activation bytes than ``widths`` have
    (rounding adds neither weights nor adaptation memory): each width goes to the nearer choice
    (a tie: down), the group furthest above its given width goes down while a limit is
    exceeded, then the group that overshoots its given width least goes up while both hold.
    Runtimes pick faster kernels for channel counts in multiples of 4 or 8 (ONNX Runtime:
    docs/deploy.md). ``ValueError`` when the lower choices exceed a limit (a group narrower
    than ``multiple`` must grow to it)."""
    if multiple < 1:
        raise ValueError(f"--round-to must be a positive number of channels, got {multiple}")
    choices = [rounding_choices(w, f, multiple) for w, f in zip(widths, cost.full)]
    out = [min(c, key=lambda v, w=w: (abs(v - w), v)) for c, w in zip(choices, widths)]
    memory = cost.activations(widths)

    def fits(ws: list[int]) -> bool:
        return cost.weights(ws) <= budget and cost.activations(ws) <= memory

    def moved(g: int, v: int) -> list[int]:
        return [v if i == g else w for i, w in enumerate(out)]

    while not fits(out):
        live = [g for g in range(len(out)) if out[g] > choices[g][0]]
        if not live:
            raise ValueError(f"--round-to {multiple}: the lower roundings ({out}) still hold "
                             f"more weights or activations than the widths {list(widths)} (a "
                             "group narrower than the multiple grows to it; round to a smaller "
                             "multiple)")
        g = max(live, key=lambda g: out[g] / widths[g])
        out = moved(g, choices[g][0])
    while True:
        grow = [g for g in range(len(out)) if out[g] < choices[g][-1]
                and fits(moved(g, choices[g][-1]))]
        if not grow:
            return out
        g = min(grow, key=lambda g: choices[g][-1] / widths[g])
        out = moved(g, choices[g][-1])


def structured_anp(learner: Learner, sampler, keep: float = 0.5, rounds: int = 2,
                   retrain_iters: int = 100, meta_batch: int = 4, tasks: int = 20,
                   damping: float = 1e-4, device: str | torch.device = "cpu",
                   progress: bool = False, log=print, channel_criterion: str = "anp",
                   patch_stride: int = DEFAULT_PATCH_STRIDE,
                   out_dir: str | Path | None = None, checkpoint_every: int = 50,
                   meta: dict | None = None, memory: float | None = None,
                   round_to: int | None = None) -> tuple[Learner, list[ChannelPlan]]:
    """Rounds of (channel step with ``channel_criterion``, physical removal,
    re-meta-training); returns the final slim learner and the plans. With ``out_dir`` every
    round is saved (``roundNN``, ``state.json``) and the re-training checkpoints to ``work``
    every ``checkpoint_every`` iterations: called again with the same arguments (and the same
    dense learner), a killed run resumes; other arguments or another learner are refused.
    ``memory``: a budget for the activations as a fraction of the full model's
    (:func:`allocate_widths`); None: the same keep fraction in every group. ``round_to``: final
    widths in multiples of it (:func:`round_widths`)."""
    from ..checkpoint import load_checkpoint, paths, read_meta, save_checkpoint
    from ..distributed import barrier, is_main
    from ..io import atomic_write_text
    from ..training import last_iteration, meta_train

    config = {"keep": keep, "rounds": rounds, "retrain_iters": retrain_iters,
              "meta_batch": meta_batch, "tasks": tasks, "damping": damping,
              "channel_criterion": channel_criterion, "patch_stride": patch_stride,
              "memory": memory, "round_to": round_to}
    out = Path(out_dir) if out_dir is not None else None
    source = learner.digest() if out is not None else None
    plans: list[ChannelPlan] = []
    if out is not None and (out / "state.json").exists():
        state = json.loads((out / "state.json").read_text())
        # runs saved before an option existed resume at its default
        if {"memory": None, "round_to": None, **state.get("config", {})} != config or state.get(
                "source_digest") != source:
            raise ValueError(f"'{out}' holds a structured pruning run with other settings or "
                             f"of another model ({state.get('config')}); use another --out")
        plans = [ChannelPlan(p) for p in state["plans"]]
        if plans:
            learner = load_checkpoint(out / f"round{len(plans):02d}", device=device).learner
    # the input the channel groups are traced with (fixed per run)
    example = sampler.batch(10_000_000, 1)[0].support_x[:2].to(device)
    if plans:
        start_widths = state["start_widths"]
        final = state.get("final_widths") or schedule(start_widths, keep, 1)[0]
    else:
        start_widths = group_widths(learner.model, example)
        final = allocate_widths(learner.model, example, keep, memory, round_to)
    # one keep fraction (uniform) or one per group (a memory budget's or rounding's allocation)
    uniform = final == schedule(start_widths, keep, 1)[0]
    targets = schedule(start_widths, keep if uniform else [
        f / w for f, w in zip(final, start_widths)], rounds)

    def write_state() -> None:
        if is_main():
            atomic_write_text(out / "state.json", json.dumps(
                {"config": config, "source_digest": source, "start_widths": start_widths,
                 "final_widths": final, "plans": [p.keep for p in plans]}))
        barrier()

    if out is not None and not (out / "state.json").exists():
        write_state()  # before any work: a killed first round resumes only into this run
    for r, widths in enumerate(targets, 1):
        if r <= len(plans):
            continue
        t0 = time.perf_counter()
        work = out / "work" if out is not None else None
        resume = (work is not None and paths(work)[1].exists()
                  and read_meta(work).get("structured_round") == r)
        if resume:  # killed during this round's re-training: its slim learner is saved
            learner = load_checkpoint(work, device=device).learner
            plan = ChannelPlan([list(k) for k in read_meta(work)["plan"]], example=example)
        else:
            # only the anp criterion scores on tasks; l1 / random need none
            score_tasks = ([t.to(device) for t in sampler.batch(10_000_000 + r * tasks, tasks)]
                           if channel_criterion == "anp" else [])
            plan, _ = plan_step(learner, score_tasks, widths, damping=damping,
                                patch_stride=patch_stride, channel_criterion=channel_criterion,
                                seed=r, example=example)
            learner = slim_learner(learner, plan)
            learner.model.to(device)
        t1 = time.perf_counter()
        if retrain_iters:
            meta_train(learner, OffsetSampler(sampler, 20_000_000 + r * retrain_iters * meta_batch),
                       retrain_iters, meta_batch,
                       start_iteration=(last_iteration(work) or 0) if resume else 0,
                       checkpoint_path=work, checkpoint_every=checkpoint_every,
                       meta={**(meta or {}), "structured_round": r, "plan": plan.keep},
                       device=device, progress=progress, desc=f"structured round {r}")
        plans.append(plan)
        if out is not None:
            given = (meta or {}).get("structured") or {}
            if is_main():
                save_checkpoint(out / f"round{r:02d}", learner,
                                {**(meta or {}), "kind": "structured", "structured": {
                                    **given, **config, "round": r, "widths": plan.widths}})
            write_state()
        log(f"round {r}: widths {plan.widths}, scoring {t1 - t0:.1f}s, "
            f"re-training {time.perf_counter() - t1:.1f}s")
    return learner, plans
