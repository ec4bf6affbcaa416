"""The pruning loop: score -> select (exact counts) -> OBS compensation -> masks -> masked
re-meta-training, for each round of a one-shot or iterative schedule.

With ``out_dir``, every round leaves a checkpoint ``round{r:02d}`` (weights + masks + optimiser
state; loadable by ``load_checkpoint`` / ``metaprune evaluate``) and ``state.json`` records the
finished rounds. A killed run called again with the same arguments resumes: between rounds from
the last ``round{r:02d}``, within re-training from the ``work`` checkpoint that
:func:`metaprune.training.meta_train` writes every ``checkpoint_every`` iterations.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import paths, read_meta, restore_checkpoint, save_checkpoint
from ..data.tasks import OffsetSampler, Task, TaskSampler
from ..distributed import barrier, broadcast_, is_main, same_on_all_ranks, world_size
from ..finite import require_finite
from ..io import atomic_write_text
from ..learners import Learner
from ..masks import Masks, prunable_weights, sparsity_table
from ..training import meta_train
from .allocation import allocate, cumulative_targets, exact_count, parse_schedule, round_ratios
from .criteria import CRITERIA, DEFAULT_PATCH_STRIDE, Criterion, Random, get_criterion

__all__ = ["PruneConfig", "RoundResult", "prune", "prune_step", "restore_checkpoint",
           "check_resumable",
           "scoring_tasks", "starved_layers", "FEW_INPUTS_PER_UNIT", "SCORE_TASK_OFFSET",
           "RETRAIN_TASK_OFFSET"]

# task-index offsets of the sampler streams used for scoring and re-training (disjoint from
# the dense training stream, which starts at 0)
SCORE_TASK_OFFSET = 2_000_000_000
RETRAIN_TASK_OFFSET = 1_000_000_000


# PruneConfig fields handed to a criterion whose constructor takes an argument of that name
CRITERION_FIELDS = ("h_data", "damping", "patch_stride", "compensation", "obs_weights",
                    "bn_aware", "seed")


@dataclass
class PruneConfig:
    """Everything that determines a pruning run (saved in ``state.json``; a resumed run must
    use the same values)."""

    method: str = "anp"
    sparsity: float = 0.85
    schedule: list[float] | str | None = "default"   # increments, "one-shot" or "default"
    allocation: str = "layerwise"
    layer_ratios: dict[str, float] | None = None     # final per-layer ratios (layerwise)
    tasks: int = 20                                  # scoring tasks per round
    retrain_iters: int = 0                           # masked re-meta-training per round
    meta_batch: int = 4
    h_data: str | None = None                        # anp/lobs: support|query|both (None: default)
    damping: float = 1e-4                            # relative to mean diag(H)
    patch_stride: int = DEFAULT_PATCH_STRIDE         # anp/lobs: every n-th conv patch
    compensation: str = "auto"                       # auto|joint|single|none (OBS criteria)
    obs_weights: str = "meta"                        # anp: meta|adapted (OBS start weights)
    bn_aware: bool = False                           # anp/lobs: saliency after BatchNorm
    include_first: bool = True
    include_last: bool = True
    seed: int = 0            # a seeded criterion's (random); the tasks: the sampler's seed
    checkpoint_every: int = 50
    criterion_options: dict[str, Any] | None = None  # more keyword arguments of the criterion

    def targets(self) -> list[float]:
        return cumulative_targets(self.sparsity, parse_schedule(self.schedule))

    def criterion(self) -> Criterion:
        """The criterion of ``method`` with the fields above that its constructor takes (by
        name; ``h_data`` only when set) and ``criterion_options`` on top."""
        if self.method not in CRITERIA:
            raise ValueError(f"unknown pruning method '{self.method}'; choose from "
                             f"{sorted(CRITERIA)}")
        opts = {k: getattr(self, k) for k in CRITERION_FIELDS
                if self.criterion_takes(k) and getattr(self, k) is not None}
        return get_criterion(self.method, **{**opts, **(self.criterion_options or {})})

    def criterion_takes(self, field: str) -> bool:
        """Whether the constructor of ``method``'s criterion has an argument ``field``."""
        return field in inspect.signature(CRITERIA[self.method]).parameters


@dataclass
class RoundResult:
    round: int
    target: float
    sparsity: float              # over the prunable weights
    global_sparsity: float       # over all parameters (BatchNorm, biases included)
    layers: dict[str, float]
    checkpoint: str | None = None
    # wall seconds of each stage; round_seconds = all of them + checkpoint writes
    score_seconds: float = 0.0
    select_seconds: float = 0.0
    compensate_seconds: float = 0.0
    mask_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    retrain_seconds: float = 0.0
    round_seconds: float = 0.0
    retrain_loss: float | None = None
    retrain_acc: float | None = None
    compensation: dict[str, float] = field(default_factory=dict)
    # CPU results are bit-reproducible only at the same thread count and number of ranks
    # (reduction order)
    torch_threads: int = 0
    world_size: int = 1


def scoring_tasks(sampler: TaskSampler, n_tasks: int, rnd: int,
                  device: str | torch.device = "cpu") -> list[Task]:
    """The ``n_tasks`` tasks that score pruning round ``rnd`` (1-based) of ``prune``."""
    start = SCORE_TASK_OFFSET + (rnd - 1) * n_tasks
    return [t.to(device) for t in sampler.batch(start, n_tasks)]


def prune_step(learner: Learner, criterion: Criterion, tasks: Sequence[Task],
               ratio: float | Mapping[str, float], names: Sequence[str] | None = None,
               allocation: str = "layerwise", seed: int = 0) -> tuple[Masks, dict]:
    """One pruning step on ``learner`` in place: score, select exactly, compensate (OBS
    criteria), set the masks. ``names`` defaults to every prunable weight. Returns the new masks
    and stats: wall seconds of each stage (``score_seconds``, ``select_seconds``,
    ``compensate_seconds``, ``mask_seconds``) and per-layer ``compensation``. Under
    torch.distributed the scoring work is split over the ranks, and rank 0's weights and masks
    are broadcast at the end (every rank computed the same ones; this makes it a guarantee)."""
    names = list(prunable_weights(learner.model) if names is None else names)
    t0 = time.perf_counter()
    scores = criterion.score(learner, tasks, names, seed=seed)
    require_finite(scores.scores, f"pruning scores of '{criterion.name}'")
    t1 = time.perf_counter()
    current = {n: learner.masks[n] for n in names if n in learner.masks}
    new = allocate(scores.scores, ratio, allocation, current)
    t2 = time.perf_counter()
    comp = criterion.compensate(learner, scores, new)
    t3 = time.perf_counter()
    masks = {**learner.masks, **new}
    if world_size() > 1:  # by name: the ranks' dicts may hold the same masks in other orders
        broadcast_(masks[n] for n in sorted(masks))
        broadcast_([*learner.meta_parameters().values(), *learner.model.buffers()])
    learner.set_masks(masks)
    _check_zero(learner)
    t4 = time.perf_counter()
    return masks, {"score_seconds": t1 - t0, "select_seconds": t2 - t1,
                   "compensate_seconds": t3 - t2, "mask_seconds": t4 - t3,
                   "compensation": comp}


def _check_zero(learner: Learner) -> None:
    params = learner.params()
    for n, m in learner.masks.items():
        if bool((params[n].detach()[m == 0] != 0).any()):
            raise RuntimeError(f"invariant broken: a pruned weight of '{n}' is not 0")


# sidecar keys written by save_checkpoint / meta_train / this module: never copied over
_RESERVED_META = {"format", "version", "model", "learner", "optimizer", "git_commit",
                  "tensors_sha256", "iteration", "train_seconds", "train_seconds_before",
                  "metrics", "kind", "pruning", "round_result"}


def _round_result(learner: Learner, rnd: int, target: float, names: Sequence[str]) -> RoundResult:
    rows = sparsity_table(learner.model, {n: learner.masks[n] for n in names})
    layers = {r["name"]: r["sparsity"] for r in rows if not r["name"].startswith("[")}
    return RoundResult(rnd, target, rows[-2]["sparsity"], rows[-1]["sparsity"], layers)


# a layer whose output units keep fewer inputs than this on average is warned about
FEW_INPUTS_PER_UNIT = 2.0


def starved_layers(model: torch.nn.Module, kept: Mapping[str, float]
                   ) -> dict[str, tuple[float, int]]:
    """Layers (param names) whose output units keep fewer than ``FEW_INPUTS_PER_UNIT`` of
    their inputs on average, given each layer's kept fraction: ``{name: (kept inputs per
    unit, inputs per unit)}`` (e.g. a 3x3 conv on 1-channel images: 9 inputs; 85% leaves
    1.35)."""
    params = dict(model.named_parameters())
    out = {}
    for n, k in kept.items():
        fan_in = params[n][0].numel()
        if fan_in * k < FEW_INPUTS_PER_UNIT:
            out[n] = (fan_in * k, fan_in)
    return out


def _warn_few_inputs(learner: Learner, ratios: Mapping[str, float]) -> None:
    """Warn about layers that the common ratio leaves with almost no input per output unit."""
    starved = starved_layers(learner.model, {n: 1 - r for n, r in ratios.items()})
    for n, (kept, fan_in) in starved.items():
        warnings.warn(
            f"pruning '{n}' to {ratios[n]:.0%} leaves each of its output units about "
            f"{kept:.1f} of its {fan_in} inputs; on Omniglot (1-channel "
            "images) keeping the first layer and the head dense made most of the "
            "difference at 85-95% (benchmarks/README.md, setting A); consider "
            "include_first=False / include_last=False (what the command line's default "
            "--preset recommended does) or a per-layer ratio (layer_ratios, --layer-ratio)",
            stacklevel=3)


def check_resumable(out_dir: str | os.PathLike, config: PruneConfig,
                    source_digest: str | None = None) -> dict | None:
    """The ``state.json`` of the pruning run in ``out_dir`` (None if there is none); a
    ValueError if that run was made with another configuration or, when ``source_digest``
    (:meth:`Learner.digest` of the model to prune) is given, from another model."""
    state_path = Path(out_dir) / "state.json"
    if not state_path.exists():
        return None
    state = json.loads(state_path.read_text())
    saved_source = state.get("source_digest")
    if source_digest is not None and saved_source is not None and saved_source != source_digest:
        raise ValueError(f"'{out_dir}' holds a pruning run of another model (digest "
                         f"{saved_source[:12]}, this one {source_digest[:12]}); use another "
                         "--out")
    # a run saved before an option existed holds that option at its default
    defaults = json.loads(json.dumps(asdict(PruneConfig())))
    saved = state.get("config")
    if isinstance(saved, dict):
        saved = {**defaults, **saved}
    wanted = json.loads(json.dumps(asdict(config)))
    if saved != wanted:
        if not isinstance(saved, dict):
            saved = {}
        diff = [f"{k}: {saved.get(k, '(unset)')!r} -> {wanted.get(k, '(unset)')!r}"
                for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
        hint = ("; the recommended preset re-trained dense iterations / 10 per round before "
                f"2026-12-01 (now / 5): --retrain-iters {saved['retrain_iters']} resumes a run "
                "started then" if "retrain_iters" in saved and any(
                    d.startswith("retrain_iters:") for d in diff) else "")
        raise ValueError(f"'{out_dir}' holds a pruning run with another configuration "
                         f"({'; '.join(diff[:6])}): use another --out or the same options (a "
                         "run made before 'metaprune prune --preset' existed resumes with "
                         f"--preset paper{hint})")
    return state


def prune(learner: Learner, sampler: TaskSampler, config: PruneConfig | None = None, *,
          out_dir: str | os.PathLike | None = None, meta: dict | None = None,
          device: str | torch.device = "cpu", progress: bool = True,
          on_round: Callable[[RoundResult], bool | None] | None = None, **overrides
          ) -> list[RoundResult]:
    """Prune ``learner`` in place following ``config`` (fields may also be given as keyword
    overrides, e.g. ``prune(learner, sampler, method="anp", sparsity=0.85)``).

    Each round ``r``: draw ``config.tasks`` scoring tasks from ``sampler`` (a stream disjoint
    from training), score with the criterion, prune every prunable layer to the round's
    cumulative target with exact counts, compensate (OBS), set the masks, then re-meta-train
    with the masks for ``retrain_iters`` iterations (``meta_batch`` tasks each); both task
    streams come from ``sampler``'s seed (``config.seed`` seeds only a seeded criterion, such as
    ``random``, and prune() warns when it would change nothing). ``meta`` is
    stored in every checkpoint (e.g. the dense checkpoint's config and data). To resume a killed
    run, call again with the same learner as the first call (the dense one) and ``out_dir``.
    """
    cfg = PruneConfig(**{**asdict(config or PruneConfig()), **overrides})
    criterion = cfg.criterion()
    sampler_seed = getattr(sampler, "seed", cfg.seed)
    if cfg.seed != sampler_seed and not cfg.criterion_takes("seed"):
        warnings.warn(f"seed={cfg.seed} changes nothing for method '{cfg.method}': it seeds "
                      "only a criterion that takes a seed ('random'); the scoring and "
                      f"re-training tasks come from the sampler (seed {sampler_seed}), so "
                      "another replicate needs a sampler with another seed "
                      "(metaprune prune --seed sets both)", stacklevel=2)
    targets = cfg.targets()
    names = prunable_weights(learner.model, cfg.include_first, cfg.include_last)
    if not names:
        raise ValueError(f"{type(learner.model).__name__} has no prunable Conv2d/Linear layer")
    final_ratios = round_ratios(names, targets[-1], cfg.sparsity, cfg.layer_ratios)
    for r in final_ratios.values():
        exact_count(r, 1)  # fail early on a bad per-layer ratio
    if cfg.allocation == "layerwise":
        _warn_few_inputs(learner, final_ratios)
    if cfg.retrain_iters < 0 or cfg.tasks < 0 or cfg.meta_batch < 1:
        raise ValueError("retrain_iters and tasks must be >= 0, meta_batch >= 1")
    if criterion.needs_tasks and cfg.tasks < 1:
        raise ValueError(f"method '{cfg.method}' needs --tasks >= 1")
    out = Path(out_dir) if out_dir is not None else None
    cfg_doc = json.loads(json.dumps(asdict(cfg)))
    source = learner.digest() if out is not None else None
    results: list[RoundResult] = []
    resume_iter = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        state_path = out / "state.json"
        state = check_resumable(out, cfg, source)
        if state is not None:
            results = [RoundResult(**r) for r in state.get("rounds", [])]
            if results:
                restore_checkpoint(learner, out / f"round{results[-1].round:02d}")
        work = out / "work"
        if paths(work)[1].exists():
            wmeta = read_meta(work)
            if wmeta.get("pruning", {}).get("round") == len(results) + 1:
                restore_checkpoint(learner, work)
                resume_iter = int(wmeta.get("iteration", 0))
        same_on_all_ranks(len(results), f"the rounds finished in '{out}'")
        same_on_all_ranks(-1 if resume_iter is None else resume_iter,
                          f"the re-training iteration to resume from in '{out}'")
        barrier()  # every rank has read the run's state before rank 0 writes any
        if not state_path.exists() and is_main():
            atomic_write_text(state_path, json.dumps(
                {"config": cfg_doc, "source_digest": source, "targets": targets, "rounds": []},
                indent=2))
    base_meta = {k: v for k, v in (meta or {}).items() if k not in _RESERVED_META}
    criterion_opts = criterion.options()
    for rnd in range(len(results) + 1, len(targets) + 1):
        t_round = time.perf_counter()
        target = targets[rnd - 1]
        rmeta = {**base_meta, "kind": "pruned",
                 "pruning": {**cfg_doc, "criterion_options": criterion_opts, "round": rnd,
                             "target": target, "targets": targets}}
        first_iter = (rnd - 1) * cfg.retrain_iters
        stats: dict = {"compensation": {}}
        ck_seconds = 0.0
        if resume_iter is None:
            ratios = round_ratios(names, target, cfg.sparsity, cfg.layer_ratios)
            ratio = ratios if cfg.layer_ratios else target
            t0 = time.perf_counter()
            tasks = scoring_tasks(sampler, cfg.tasks, rnd, device) if criterion.needs_tasks else []
            task_seconds = time.perf_counter() - t0
            seed = cfg.seed * 1000 + rnd if isinstance(criterion, Random) else rnd
            _, stats = prune_step(learner, criterion, tasks, ratio, names, cfg.allocation, seed)
            stats["score_seconds"] += task_seconds  # building the scoring tasks counts too
            resume_iter = first_iter
            if out is not None and cfg.retrain_iters > 0 and is_main():
                t0 = time.perf_counter()
                save_checkpoint(out / "work", learner, {**rmeta, "iteration": first_iter})
                ck_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        hist: list[dict] = []
        if cfg.retrain_iters > 0:
            hist = meta_train(
                learner, OffsetSampler(sampler, RETRAIN_TASK_OFFSET), first_iter
                + cfg.retrain_iters, cfg.meta_batch, start_iteration=resume_iter,
                checkpoint_path=None if out is None else out / "work",
                checkpoint_every=cfg.checkpoint_every, meta=rmeta, device=device,
                progress=progress, desc=f"re-train round {rnd}")
        resume_iter = None
        _check_zero(learner)
        res = _round_result(learner, rnd, target, names)
        for stage in ("score", "select", "compensate", "mask"):
            setattr(res, f"{stage}_seconds", stats.get(f"{stage}_seconds", 0.0))
        res.compensation = stats["compensation"]
        res.retrain_seconds = time.perf_counter() - t0
        res.torch_threads = torch.get_num_threads()
        res.world_size = world_size()
        if hist:
            tail = hist[-min(len(hist), 10):]
            res.retrain_loss = sum(h["loss"] for h in tail) / len(tail)
            res.retrain_acc = sum(h["acc"] for h in tail) / len(tail)
        if out is not None:
            ck = out / f"round{rnd:02d}"
            res.checkpoint = str(ck)
            t0 = time.perf_counter()
            res.checkpoint_seconds = ck_seconds  # the round checkpoint's own write: below
            res.round_seconds = t0 - t_round
            if is_main():
                save_checkpoint(ck, learner, {**rmeta, "iteration": first_iter
                                              + cfg.retrain_iters, "round_result": asdict(res)})
            res.checkpoint_seconds += time.perf_counter() - t0
            res.round_seconds = time.perf_counter() - t_round
            results.append(res)
            if is_main():
                atomic_write_text(out / "state.json", json.dumps(
                    {"config": cfg_doc, "source_digest": source, "targets": targets,
                     "rounds": [asdict(r) for r in results]}, indent=2))
            barrier()  # the round's checkpoint exists before any rank goes on
        else:
            res.round_seconds = time.perf_counter() - t_round
            results.append(res)
        if on_round is not None and on_round(res) is False:
            break  # the caller stops here (e.g. an accuracy budget was exceeded)
    return results
