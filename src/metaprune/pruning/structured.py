"""Structured ANP for Conv4: remove whole output channels, physically.

Saliency of a channel = channel-level OBS under the ADAPTED network (ANP's layer-wise Hessian,
:mod:`.hessian`, recorded while the learner runs on adapted tasks). Removing output channel ``c``
of block ``i`` removes, in the layer that consumes it (the next conv, or the head), the group
``Q_c`` of input columns fed by ``c`` (its k x k patch columns; its spatial features for the
head). For that consumer, with weights ``W`` ``[out, d]`` (bias column last) and
``Hinv = (H + lambda I)^-1``, the exact group-OBS cost and compensation are

    cost(c) = trace(W[:, Q] (Hinv[Q, Q])^-1 W[:, Q]^T)      (layer-output squared error)
    dW      = -W[:, Q] (Hinv[Q, Q])^-1 Hinv[Q, :]            (W[:, Q] becomes 0)

and after each removal ``Hinv <- Hinv - Hinv[:, Q] (Hinv[Q, Q])^-1 Hinv[Q, :]`` (the inverse
Hessian of the remaining inputs): channels are removed greedily, one at a time, cheapest first.
The removed channel's own filter, bias and BatchNorm entries then no longer matter (its consumer
columns are 0) and are deleted with it: :func:`slim_model` builds a ``conv4-slim`` with the
surviving channels whose outputs equal the masked full-width model's (tested).

Baselines with the same rounds, physical removal and re-meta-training (``channel_criterion``):
``l1`` removes the channels whose filters have the smallest L1 norm (filter-norm pruning),
``random`` removes random channels; neither compensates the consumer.

Between rounds the slim network is re-meta-trained as is (mathematically the masked
re-meta-training of the full-width network: removed channels contribute nothing), at a fraction
of its cost. Meta-SGD (per-weight learning rates) is not supported here.

    metaprune prune CHECKPOINT --method anp-structured --keep 0.5 --rounds 2 --out DIR

Every round is saved as ``DIR/roundNN`` (a ``conv4-slim`` checkpoint) with ``DIR/state.json``,
and the re-training inside a round checkpoints to ``DIR/work``: a killed run resumes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.tasks import OffsetSampler
from ..learners import Learner, build_learner
from ..masks import Masks
from ..models import Conv4, build_model
from .criteria import ANP, DEFAULT_H_DATA, DEFAULT_PATCH_STRIDE
from .hessian import damped_inverse, weight_matrix


@dataclass
class ChannelPlan:
    """Kept output channels of every block (sorted indices) and per-block removal costs."""

    keep: list[list[int]]
    costs: list[list[float]] = field(default_factory=list)

    @property
    def widths(self) -> list[int]:
        return [len(k) for k in self.keep]


def check_structured(model: nn.Module) -> None:
    """TypeError unless ``model`` is a Conv4 (the architectures structured pruning supports)."""
    if not isinstance(model, Conv4):
        raise TypeError(f"structured pruning supports conv4/conv4-slim, not "
                        f"{type(model).__name__}")


def block_widths(model: nn.Module) -> list[int]:
    return [blk[0].out_channels for blk in model.features]


def consumer(model: nn.Module, i: int) -> tuple[str, nn.Module]:
    """The layer reading block ``i``'s output channels: the next conv or the head."""
    if i + 1 < len(model.features):
        return f"features.{i + 1}.0", model.features[i + 1][0]
    return "head", model.head


def channel_columns(model: nn.Module, i: int) -> list[torch.Tensor]:
    """For each output channel of block ``i``, its column indices in ``weight_matrix`` of the
    consumer (conv: the k x k patch columns; head: the flattened spatial features)."""
    name, mod = consumer(model, i)
    width = block_widths(model)[i]
    per = mod.weight[0].numel() // width if name != "head" else mod.in_features // width
    return [torch.arange(c * per, (c + 1) * per) for c in range(width)]


def group_obs(W: torch.Tensor, hinv: torch.Tensor, groups: Sequence[torch.Tensor],
              n_remove: int) -> tuple[list[int], torch.Tensor, list[float]]:
    """Greedy exact group OBS: remove ``n_remove`` of ``groups`` (column index sets of ``W``
    ``[out, d]``), cheapest first. Returns (removed group ids in order, compensated W with the
    removed columns exactly 0, cost of each removal)."""
    W = W.detach().double().clone()
    hinv = hinv.double().clone()
    alive = list(range(len(groups)))
    removed, costs = [], []
    for _ in range(n_remove):
        best = None
        for g in alive:
            Q = groups[g]
            inv = torch.linalg.inv(hinv[Q][:, Q])
            wq = W[:, Q]
            cost = float(torch.einsum("oq,qr,or->", wq, inv, wq))
            if best is None or cost < best[0]:
                best = (cost, g, inv)
        cost, g, inv = best
        Q = groups[g]
        W = W - W[:, Q] @ inv @ hinv[Q, :]
        hinv = hinv - hinv[:, Q] @ inv @ hinv[Q, :]
        W[:, Q] = 0.0
        alive.remove(g)
        removed.append(g)
        costs.append(cost)
    return removed, W, costs


CHANNEL_CRITERIA = ("anp", "l1", "random")
# method names (metaprune prune --method, benchmarks) -> channel criterion
STRUCTURED_METHODS = {"anp-structured": "anp", "l1-structured": "l1",
                      "random-structured": "random"}


def _cheapest_channels(model: nn.Module, i: int, n_remove: int, criterion: str,
                       generator: torch.Generator) -> tuple[list[int], list[float]]:
    """``l1`` / ``random`` channel choice for block ``i``: ids removed, with their scores."""
    filters = model.features[i][0].weight.detach()
    if criterion == "l1":
        score = filters.abs().reshape(filters.shape[0], -1).sum(1).double()
    else:
        score = torch.rand(filters.shape[0], generator=generator, dtype=torch.float64)
    order = torch.argsort(score, stable=True)[:n_remove].tolist()
    return order, [float(score[g]) for g in order]


def plan_step(learner: Learner, tasks: Sequence, widths: Sequence[int],
              damping: float = 1e-4, h_data: str = DEFAULT_H_DATA, patch_stride: int = 1,
              compensate: bool = True, channel_criterion: str = "anp", seed: int = 0
              ) -> tuple[ChannelPlan, Masks]:
    """One structured step in place on ``learner``: score channels (``anp``: group OBS of the
    consumer under the adapted network; ``l1``; ``random`` with ``seed``), pick ``widths[i]``
    survivors per block, compensate the consumers (anp: OBS) and set the equivalent masks
    (removed filters and their consumer columns = 0). Returns the plan and the masks."""
    model = learner.model
    check_structured(model)
    if channel_criterion not in CHANNEL_CRITERIA:
        raise ValueError(f"channel criterion must be one of {CHANNEL_CRITERIA}, got "
                         f"'{channel_criterion}'")
    cur = block_widths(model)
    if len(widths) != len(cur) or any(not 1 <= w <= c for w, c in zip(widths, cur, strict=True)):
        raise ValueError(f"target widths {list(widths)} must be 1..{cur} per block")
    names = [f"{consumer(model, i)[0]}.weight" for i in range(len(cur))]
    obs = channel_criterion == "anp"
    H = (ANP(h_data=h_data, damping=damping, patch_stride=patch_stride).hessians(
        learner, tasks, names) if obs else {})
    gen = torch.Generator().manual_seed(seed)
    keep, costs, masks = [], [], dict(learner.masks)
    params = dict(model.named_parameters())
    for i, width in enumerate(cur):
        cname, mod = consumer(model, i)
        groups = channel_columns(model, i)
        k = mod.weight[0].numel()
        if not obs:
            removed, cst = _cheapest_channels(model, i, width - widths[i], channel_criterion,
                                              gen)
        else:
            W = weight_matrix(mod).detach()
            hinv = damped_inverse(H[f"{cname}.weight"], damping)
            removed, Wc, cst = group_obs(W, hinv, groups, width - widths[i])
        with torch.no_grad():
            if compensate and obs:
                mod.weight.copy_(Wc[:, :k].reshape(mod.weight.shape).to(mod.weight.dtype))
                if mod.bias is not None:
                    mod.bias.copy_(Wc[:, k].to(mod.bias.dtype))
        kept = sorted(set(range(width)) - set(removed))
        keep.append(kept)
        costs.append(cst)
        # masks: the removed filters of block i and their columns in the consumer
        conv_w = f"features.{i}.0.weight"
        m = masks.get(conv_w, torch.ones_like(params[conv_w])).clone()
        m[removed] = 0
        masks[conv_w] = m
        cw = f"{cname}.weight"
        mc = masks.get(cw, torch.ones_like(params[cw])).clone()
        flat = mc.reshape(mc.shape[0], -1)
        for g in removed:
            flat[:, groups[g]] = 0
        masks[cw] = flat.reshape(mc.shape)
    learner.set_masks(masks)
    return ChannelPlan(keep, costs), masks


@torch.no_grad()
def slim_model(model: nn.Module, plan: ChannelPlan) -> Conv4:
    """Physically remove the channels not in ``plan.keep``: a ``conv4-slim`` whose outputs
    equal the masked full-width model's."""
    check_structured(model)
    cfg = model.config
    slim = build_model("conv4-slim", widths=plan.widths, n_way=cfg["n_way"],
                       in_channels=cfg["in_channels"], image_size=cfg["image_size"])
    prev = torch.arange(cfg["in_channels"])
    for i, kept in enumerate(plan.keep):
        kept_t = torch.tensor(kept)
        src, dst = model.features[i], slim.features[i]
        dst[0].weight.copy_(src[0].weight[kept_t][:, prev])
        dst[0].bias.copy_(src[0].bias[kept_t])
        dst[1].weight.copy_(src[1].weight[kept_t])
        dst[1].bias.copy_(src[1].bias[kept_t])
        prev = kept_t
    per = model.head.in_features // block_widths(model)[-1]
    cols = torch.cat([torch.arange(c * per, (c + 1) * per) for c in plan.keep[-1]])
    slim.head.weight.copy_(model.head.weight[:, cols])
    slim.head.bias.copy_(model.head.bias)
    return slim


def slim_learner(learner: Learner, plan: ChannelPlan) -> Learner:
    """A fresh learner of the same kind around the slim model (no masks: nothing is pruned
    inside the surviving channels)."""
    if learner.extra_state():
        raise NotImplementedError(f"structured pruning does not support learner "
                                  f"'{learner.name}' (per-weight state)")
    cfg = learner.config()
    name = cfg.pop("name")
    return build_learner(name, slim_model(learner.model, plan), **cfg)


def schedule(widths: Sequence[int], keep: float, rounds: int) -> list[list[int]]:
    """Per-round target widths shrinking geometrically to ``round(keep * width)``."""
    if not 0 < keep <= 1 or rounds < 1:
        raise ValueError(f"keep must be in (0, 1] and rounds >= 1, got {keep}, {rounds}")
    out = []
    for r in range(1, rounds + 1):
        f = keep ** (r / rounds)
        out.append([max(1, int(math.floor(w * f + 0.5))) for w in widths])
    return out


def structured_anp(learner: Learner, sampler, keep: float = 0.5, rounds: int = 2,
                   retrain_iters: int = 100, meta_batch: int = 4, tasks: int = 20,
                   damping: float = 1e-4, device: str | torch.device = "cpu",
                   progress: bool = False, log=print, channel_criterion: str = "anp",
                   patch_stride: int = DEFAULT_PATCH_STRIDE,
                   out_dir: str | Path | None = None, checkpoint_every: int = 50,
                   meta: dict | None = None) -> tuple[Learner, list[ChannelPlan]]:
    """Rounds of (channel step with ``channel_criterion``, physical removal,
    re-meta-training); returns the final slim learner and the plans. With ``out_dir`` every
    round is saved (``roundNN``, ``state.json``) and the re-training checkpoints to ``work``
    every ``checkpoint_every`` iterations: called again with the same arguments (and the same
    dense learner), a killed run resumes; other arguments or another learner are refused."""
    from ..checkpoint import load_checkpoint, paths, read_meta, save_checkpoint
    from ..distributed import barrier, is_main
    from ..io import atomic_write_text
    from ..training import last_iteration, meta_train

    config = {"keep": keep, "rounds": rounds, "retrain_iters": retrain_iters,
              "meta_batch": meta_batch, "tasks": tasks, "damping": damping,
              "channel_criterion": channel_criterion, "patch_stride": patch_stride}
    out = Path(out_dir) if out_dir is not None else None
    source = learner.digest() if out is not None else None
    plans: list[ChannelPlan] = []
    if out is not None and (out / "state.json").exists():
        state = json.loads((out / "state.json").read_text())
        if state.get("config") != config or state.get("source_digest") != source:
            raise ValueError(f"'{out}' holds a structured pruning run with other settings or "
                             f"of another model ({state.get('config')}); use another --out")
        plans = [ChannelPlan(p) for p in state["plans"]]
        if plans:
            learner = load_checkpoint(out / f"round{len(plans):02d}", device=device).learner
    start_widths = block_widths(learner.model) if not plans else state["start_widths"]
    targets = schedule(start_widths, keep, rounds)

    def write_state() -> None:
        if is_main():
            atomic_write_text(out / "state.json", json.dumps(
                {"config": config, "source_digest": source, "start_widths": start_widths,
                 "plans": [p.keep for p in plans]}))
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
            plan = ChannelPlan([list(k) for k in read_meta(work)["plan"]])
        else:
            # only the anp criterion scores on tasks; l1 / random need none
            score_tasks = ([t.to(device) for t in sampler.batch(10_000_000 + r * tasks, tasks)]
                           if channel_criterion == "anp" else [])
            plan, _ = plan_step(learner, score_tasks, widths, damping=damping,
                                patch_stride=patch_stride, channel_criterion=channel_criterion,
                                seed=r)
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
