"""``metaprune prune CHECKPOINT --method anp --sparsity 0.85 --out DIR`` and
``metaprune adaptation-shift CHECKPOINT`` (does ANP see anything L-OBS does not?)."""

from __future__ import annotations

import argparse
import sys

import torch

from ..argtypes import FRACTION, NON_NEGATIVE, POSITIVE, real
from ..config import parse_key_value
from ..distributed import check_device, is_main
from ..masks import dense_masks, format_sparsity_table, prunable_weights, sparsity_table
from .budget import DEFAULT_GUARD_DROP, DEFAULT_PATIENCE
from .criteria import (
    CRITERIA,
    DEFAULT_H_DATA,
    DEFAULT_PATCH_STRIDE,
    H_DATA_CHOICES,
    OBS_WEIGHTS_CHOICES,
)
from .pruner import PruneConfig, check_resumable, prune, scoring_tasks
from .structured import STRUCTURED_METHODS

# options of the unstructured methods that the structured ones do not use (-> their defaults)
STRUCTURED_IGNORES = {"schedule": "default", "h_data": None, "compensation": "auto",
                      "obs_weights": "meta", "bn_aware": False, "allocation": "layerwise",
                      "layer_ratio": [], "criterion_option": [], "seed": 0}
# ... and the structured methods' options that the unstructured ones do not use
UNSTRUCTURED_IGNORES = {"keep": None, "rounds": 2, "memory_budget": None, "round_to": None}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="prune a meta-trained checkpoint (ANP or a baseline), re-meta-training "
        "between rounds; resumes if killed",
        description="Prune every Conv2d/Linear weight of a checkpoint to --sparsity following a "
        "schedule; after each round the masked network is re-meta-trained and saved as "
        "OUT/roundNN (loadable by 'metaprune evaluate').")
    p.add_argument("checkpoint", help="checkpoint from 'metaprune train' (a partly pruned one "
                   "works if no round's target is below its sparsity)")
    p.add_argument("--criterion-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the criterion's constructor (repeatable), for "
                   "options without a flag of their own, e.g. a registered criterion's")
    p.add_argument("--method", default="anp",
                   choices=sorted(CRITERIA) + list(STRUCTURED_METHODS),
                   help="pruning criterion; 'anp-structured' removes whole channels of any "
                   "traceable network (writes a smaller one, see docs/deploy.md); "
                   "'l1-structured' and 'random-structured' are its channel baselines")
    p.add_argument("--sparsity", type=FRACTION, default=None,
                   help="final fraction of each layer's weights to prune (default 0.85; with "
                   "--max-drop the largest tried, default 0.95)")
    p.add_argument("--max-drop", type=real(0), default=None, metavar="POINTS",
                   help="accuracy budget: prune round after round while the paired accuracy "
                   "drop against the dense model on VALIDATION tasks stays within POINTS, and "
                   "name the sparsest round that met it (OUT/validation.json)")
    p.add_argument("--patience", type=POSITIVE, default=None, metavar="ROUNDS",
                   help=f"with --max-drop: stop after ROUNDS consecutive rounds over the "
                   f"budget (default {DEFAULT_PATIENCE}; more tolerates a noisy validation round)")
    p.add_argument("--val-split", default=None,
                   help="validation split (default: the config's data.val_split, else 'val'; "
                   "its classes must not be the test split's)")
    p.add_argument("--val-tasks", type=NON_NEGATIVE, default=300,
                   help="fixed validation tasks for --max-drop and for the end-of-run check "
                   f"that the model lost at most {DEFAULT_GUARD_DROP:g} point (default 300; "
                   "0 skips the check)")
    p.add_argument("--schedule", default="default",
                   help="per-round increments, e.g. '0.1x8,0.05' (the default), or 'one-shot'")
    p.add_argument("--preset", choices=sorted(PRESETS), default="recommended",
                   help="recommended (default): first conv layer and head dense, re-training "
                   "per round = max(100, dense iterations / 5), the best-measured setting "
                   "(benchmarks/README.md, items 4, 8, 14); paper: every layer pruned, 100 "
                   "re-training iterations per round, the method as published")
    p.add_argument("--retrain-iters", type=NON_NEGATIVE, default=None,
                   help="masked re-meta-training iterations after each round (default: the "
                   "preset's)")
    p.add_argument("--meta-batch", type=POSITIVE,
                   help="tasks per re-training iteration (default: the checkpoint's config, 4)")
    p.add_argument("--tasks", type=POSITIVE, default=20,
                   help="scoring tasks per round (default 20)")
    p.add_argument("--h-data", choices=H_DATA_CHOICES, default=None,
                   help=f"anp/lobs: data whose layer inputs form H (default {DEFAULT_H_DATA})")
    p.add_argument("--damping", type=real(0, low_open=True), default=1e-4,
                   help="anp/lobs: damping relative to the mean diagonal of H (default 1e-4)")
    p.add_argument("--patch-stride", type=POSITIVE, default=DEFAULT_PATCH_STRIDE,
                   help="anp/lobs: keep every n-th conv patch when forming H "
                   f"(default {DEFAULT_PATCH_STRIDE}; 1 = all)")
    p.add_argument("--compensation", choices=["auto", "joint", "single", "none"],
                   default="auto", help="anp/lobs OBS weight update (default auto)")
    p.add_argument("--obs-weights", choices=list(OBS_WEIGHTS_CHOICES), default="meta",
                   help="anp: weights the saliency and compensation start from: the "
                   "meta-initialisation (default) or the mean adapted weights of the scoring "
                   "tasks")
    p.add_argument("--bn-aware", action="store_true",
                   help="anp/lobs: rate a conv weight by its error after the BatchNorm that "
                   "follows the conv (saliency x gamma^2 / channel output variance)")
    p.add_argument("--allocation", choices=["layerwise", "global"], default="layerwise")
    p.add_argument("--layer-ratio", action="append", default=[], metavar="PARAM=RATIO",
                   help="final sparsity of one layer, e.g. features.0.0.weight=0.5 (repeatable)")
    p.add_argument("--keep", type=real(0, 1, low_open=True), default=None,
                   help="anp-structured: fraction of channels kept per block (default "
                   "sqrt(1 - sparsity): about that fraction of the conv weights remains)")
    p.add_argument("--rounds", type=POSITIVE, default=2,
                   help="anp-structured: pruning rounds (default 2)")
    p.add_argument("--memory-budget", type=real(0, 1, low_open=True), default=None,
                   metavar="FRACTION",
                   help="anp-structured: channel widths that keep adaptation's activations "
                   "(what the backward pass stores) within FRACTION of the dense model's, at "
                   "no more Conv2d/Linear weights than the uniform widths (a tight budget "
                   "removes weights too): the early, high-resolution channels go first "
                   "(default: the same keep fraction in every group)")
    p.add_argument("--round-to", type=POSITIVE, default=None, metavar="N",
                   help="anp-structured: every channel width a multiple of N (e.g. 8; or the "
                   "group's full width), each rounded down or up, at no more weights and "
                   "activations than the widths before rounding (uniform, or --memory-budget's);"
                   " runtimes such as ONNX Runtime pick faster kernels for such widths "
                   "(docs/deploy.md)")
    p.add_argument("--exclude-first", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the first layer dense (default: the preset's; "
                   "--no-exclude-first prunes it)")
    p.add_argument("--exclude-last", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the last layer (head) dense (default: the preset's)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0,
                   help="seed of the scoring and re-training task streams (default 0)")
    p.add_argument("--checkpoint-every", type=POSITIVE, default=50)
    p.add_argument("--out", required=True, help="output folder (roundNN checkpoints, state)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_prune)

    s = sub.add_parser(
        "adaptation-shift", help="does adaptation-awareness matter for this checkpoint? "
        "ANP's H against L-OBS's H per layer, next to the scoring-task noise",
        description="For each prunable layer: how far the inner loop moves the weights, how "
        "much it changes the layer-input Hessian H that anp uses (against lobs's un-adapted "
        "H), and how many of the weights anp would prune next lobs would prune too; each next "
        "to the same number for two disjoint batches of scoring tasks. Where the adapted and "
        "the task-noise columns are alike, anp and lobs make the same decisions up to noise.")
    s.add_argument("checkpoint", help="a dense or partly pruned checkpoint")
    s.add_argument("--target", type=FRACTION, default=0.1,
                   help="sparsity of the next pruning step whose decisions are compared "
                   "(default 0.1, the first round of the default schedule)")
    s.add_argument("--tasks", type=POSITIVE, default=20,
                   help="scoring tasks per batch (default 20)")
    s.add_argument("--h-data", choices=H_DATA_CHOICES, default=DEFAULT_H_DATA)
    s.add_argument("--damping", type=real(0, low_open=True), default=1e-4)
    s.add_argument("--patch-stride", type=POSITIVE, default=DEFAULT_PATCH_STRIDE)
    s.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the scoring task stream")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    s.set_defaults(func=cmd_adaptation_shift)


STRUCTURED = "anp-structured"

# --preset: what the unset options default to. "recommended" is the best-measured setting
# (benchmarks/README.md: item 8, first layer and head dense, +1.60/+4.06/+18.81 points at
# 85/90/95% on Omniglot 5-way; items 4 and 14, the re-training budget decides most of the
# rest and must grow with the dense model's training); "paper" is ANP as published.
PRESETS = {"recommended": {"exclude_first": True, "exclude_last": True, "retrain": "scaled"},
           "paper": {"exclude_first": False, "exclude_last": False, "retrain": 100}}
MIN_RETRAIN_ITERS = 100
RETRAIN_SHARE = 5  # recommended: re-training per round = dense iterations / this


def apply_preset(args: argparse.Namespace, dense_iterations: int) -> str:
    """Fill the options left unset from ``args.preset``; returns a one-line description."""
    preset = PRESETS[args.preset]
    for key in ("exclude_first", "exclude_last"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.retrain_iters is None:
        args.retrain_iters = (max(MIN_RETRAIN_ITERS, round(dense_iterations / RETRAIN_SHARE))
                              if preset["retrain"] == "scaled" else int(preset["retrain"]))
    ends = {(True, True): "first layer and head dense", (False, False): "every layer pruned",
            (True, False): "first layer dense", (False, True): "head dense"}
    return (f"preset {args.preset}: {ends[(args.exclude_first, args.exclude_last)]}, "
            f"{args.retrain_iters} re-training iterations per round (dense model: "
            f"{dense_iterations} iterations)")


def structured_keep(sparsity: float, keep: float | None = None) -> float:
    """Channel keep fraction for structured pruning: ``keep`` if given, else
    ``sqrt(1 - sparsity)`` (a conv layer's weights scale with in x out channels)."""
    if keep is not None:
        if not 0 < keep <= 1:
            raise ValueError(f"--keep must be in (0, 1], got {keep}")
        return keep
    if not 0 <= sparsity < 1:
        raise ValueError(f"--sparsity must be in [0, 1), got {sparsity}")
    return (1.0 - sparsity) ** 0.5


def _dataset(data: dict, split_key: str = "train_split"):
    name, split = data["dataset"], data.get(split_key, "train")
    options = data.get("options") or {}
    try:
        from ..data.registry import get_dataset
    except ModuleNotFoundError:  # registry not available: the embedded dataset only
        if name != "glyphs":
            raise ValueError(f"dataset '{name}' needs metaprune.data.registry") from None
        from ..data.glyphs import glyphs

        return glyphs(split, **options)
    return get_dataset(name, split, data.get("root"), **options)


def _layer_ratios(items: list[str]) -> dict[str, float] | None:
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--layer-ratio '{it}' is not of the form PARAM=RATIO")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise ValueError(f"--layer-ratio '{it}': '{v}' is not a number") from None
    return out or None


def _checkpoint_and_sampler(args: argparse.Namespace):
    """The checkpoint on ``args.device`` and a sampler over the training data it records."""
    from ..checkpoint import load_checkpoint
    from ..data.tasks import TaskSampler

    device = check_device(args.device)
    ck = load_checkpoint(args.checkpoint, device=device)
    data = ck.meta.get("data") or (ck.meta.get("config") or {}).get("data")
    if not data:
        raise ValueError(f"checkpoint '{args.checkpoint}' records no training data "
                         "(sidecar key 'data'); use metaprune.pruning from Python")
    sampler = TaskSampler(_dataset(data), int(data["n_way"]), int(data["k_shot"]),
                          int(data["q_query"]), seed=args.seed,
                          name=f"{data['dataset']}/{data.get('train_split', 'train')}")
    return ck, sampler, device


def cmd_adaptation_shift(args: argparse.Namespace) -> int:
    from .diagnostics import adaptation_shift

    ck, sampler, device = _checkpoint_and_sampler(args)
    # the first round's scoring tasks, and the next batch of the same stream
    tasks_a, tasks_b = (scoring_tasks(sampler, args.tasks, rnd, device) for rnd in (1, 2))
    rows = adaptation_shift(ck.learner, tasks_a, tasks_b, args.target, h_data=args.h_data,
                            damping=args.damping, patch_stride=args.patch_stride)
    cols = ["weight_change", "dH_adapt", "dH_tasks", "agree_adapt", "agree_tasks"]
    width = max(len(r["layer"]) for r in rows)
    print(f"{'layer':<{width}}  {'sparsity':>8}  " + "  ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print(f"{r['layer']:<{width}}  {r['sparsity']:>8.3f}  "
              + "  ".join(f"{r[c]:>13.4f}" for c in cols))
    print(f"dH: relative change of the layer-input Hessian, anp vs lobs (adapt) and lobs on two "
          f"disjoint batches of {args.tasks} tasks (tasks); agree: share of the weights anp "
          f"would prune to {args.target:.0%} that lobs (adapt) or anp on the other batch "
          "(tasks) would prune too")
    return 0


def _validator(args: argparse.Namespace, ck, device):
    """The validation set-up for --max-drop / the end-of-run check, or None (with the reason
    printed) when the checkpoint's data has no validation split and --max-drop is not set."""
    from ..experiment import load_split, test_tasks
    from .budget import Validator

    cfg = ck.meta.get("config") or {}
    data = cfg.get("data") or {}
    split = args.val_split or data.get("val_split") or "val"
    if split == data.get("test_split"):
        raise ValueError(f"--val-split '{split}' is the test split; choose and check the "
                         "model on tasks the test never sees")
    try:
        if not cfg or "eval" not in cfg:
            raise ValueError(f"checkpoint '{args.checkpoint}' has no config in its sidecar")
        dataset = load_split({**data, "val_split": split}, "val_split")
        tasks = test_tasks(cfg, dataset, args.val_tasks, split)
    except (ValueError, FileNotFoundError) as e:
        if args.max_drop is not None:
            raise ValueError(f"--max-drop needs validation tasks: {e}") from e
        if is_main():
            print(f"note: no validation check at the end ({e})", file=sys.stderr)
        return None, split
    return Validator(dataset, tasks, args.out, device, not args.no_progress), split


def cmd_prune(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from .budget import ValidationPoint, advice, best_round, budget_exhausted, write_curve
    from .pruner import starved_layers

    if args.max_drop is not None and args.val_tasks < 2:
        raise ValueError(f"--val-tasks must be >= 2 with --max-drop, got {args.val_tasks}")
    if args.patience is not None and args.max_drop is None:
        raise ValueError("--patience needs --max-drop (it says when the budgeted search stops)")
    patience = args.patience or DEFAULT_PATIENCE
    if args.sparsity is None:
        args.sparsity = 0.95 if args.max_drop is not None else 0.85
    ck, sampler, device = _checkpoint_and_sampler(args)
    train_cfg = (ck.meta.get("config") or {}).get("train") or {}
    meta_batch = args.meta_batch or int(train_cfg.get("meta_batch", 4))
    # the dense model's training: a pruned or slim input records its re-training instead
    dense_its = (ck.meta.get("iteration") if ck.meta.get("kind") in (None, "dense")
                 else train_cfg.get("iterations"))
    described = apply_preset(args, int(dense_its or 0))
    if is_main() and args.method not in STRUCTURED_METHODS:
        print(described, file=sys.stderr, flush=True)
    if args.method not in STRUCTURED_METHODS:
        given = [f"--{d.replace('_', '-')}" for d, default in UNSTRUCTURED_IGNORES.items()
                 if getattr(args, d) != default]
        if given:
            raise ValueError(f"{', '.join(given)}: options of the structured methods "
                             f"({', '.join(STRUCTURED_METHODS)}), not of '{args.method}'")
    if args.method in STRUCTURED_METHODS:
        if args.max_drop is not None:
            raise ValueError(f"--max-drop works with the unstructured methods, not "
                             f"'{args.method}'")
        return _prune_structured(args, ck, sampler, meta_batch, device)
    cfg = PruneConfig(
        method=args.method, sparsity=args.sparsity, schedule=args.schedule,
        allocation=args.allocation, layer_ratios=_layer_ratios(args.layer_ratio),
        tasks=args.tasks, retrain_iters=args.retrain_iters, meta_batch=meta_batch,
        h_data=args.h_data, damping=args.damping, patch_stride=args.patch_stride,
        compensation=args.compensation, obs_weights=args.obs_weights, bn_aware=args.bn_aware,
        include_first=not args.exclude_first, include_last=not args.exclude_last, seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        criterion_options=dict(parse_key_value(o, "--criterion-option")
                               for o in args.criterion_option) or None)
    meta = {**ck.meta, "source_checkpoint": str(args.checkpoint)}
    val, split = _validator(args, ck, device) if args.val_tasks > 0 else (None, None)
    budget = DEFAULT_GUARD_DROP if args.max_drop is None else args.max_drop
    curve: list[ValidationPoint] = []
    # before anything of that run is used
    state = check_resumable(args.out, cfg, ck.learner.digest())
    if val is not None:
        curve.append(val.point(0, 0.0, ck.learner))
        if args.max_drop is not None:  # rounds a killed run finished: validate them too
            for r in (state or {}).get("rounds", []):
                learner = load_checkpoint(r["checkpoint"], device=device).learner
                curve.append(val.point(r["round"], r["sparsity"], learner, r["checkpoint"]))
                if budget_exhausted(curve, budget, patience):
                    break

    def report(r) -> bool:
        if is_main():
            print(f"round {r.round}: target {100 * r.target:.1f}%, prunable sparsity "
                  f"{100 * r.sparsity:.2f}%, {r.round_seconds:.1f}s (scoring "
                  f"{r.score_seconds:.1f}s, compensation {r.compensate_seconds:.1f}s, masks "
                  f"{r.select_seconds + r.mask_seconds:.1f}s, re-training "
                  f"{r.retrain_seconds:.1f}s, checkpoints {r.checkpoint_seconds:.1f}s) -> "
                  f"{r.checkpoint}", file=sys.stderr, flush=True)
        if val is None or args.max_drop is None:
            return True
        curve.append(val.point(r.round, r.sparsity, ck.learner, r.checkpoint))
        p = curve[-1]
        if is_main():
            print(f"  validation: {p.accuracy:.2f}%, drop {p.drop:+.2f} +- {p.drop_ci95:.2f} "
                  f"points (budget {budget:g})", file=sys.stderr, flush=True)
        return not budget_exhausted(curve, budget, patience)

    over = args.max_drop is not None and budget_exhausted(curve, budget, patience)
    results = [] if over else prune(ck.learner, sampler, cfg, out_dir=args.out, meta=meta,
                                    device=device, progress=not args.no_progress,
                                    on_round=report)
    learner = ck.learner
    if results:  # every Conv2d/Linear weight counted, the layers kept dense included
        everything = dense_masks(learner.model, prunable_weights(learner.model))
        print(format_sparsity_table(sparsity_table(learner.model,
                                                   {**everything, **learner.masks})))
        print(f"{args.method}: {len(results)} round(s), last checkpoint "
              f"{results[-1].checkpoint}")
    if val is None:
        return 0
    if args.max_drop is None:  # the end-of-run check: dense against the final model
        last = results[-1] if results else None
        if last is not None:
            curve.append(val.point(last.round, last.sparsity, learner, last.checkpoint))
    best = best_round(curve, budget)
    write_curve(args.out, curve, args.max_drop, best, split)
    final = curve[-1]
    if args.max_drop is not None and best is not None:
        print(f"sparsest model within {budget:g} points on {len(val.tasks)} {split} tasks: "
              f"round {best.round}, {100 * best.sparsity:.2f}% of the pruned layers' weights "
              f"pruned, validation {best.accuracy:.2f}% vs dense {curve[0].accuracy:.2f}% "
              f"(drop {best.drop:+.2f} +- {best.drop_ci95:.2f}) -> {best.checkpoint}")
        if final.round != best.round:
            print(f"pruning stopped after round {final.round} "
                  f"({100 * final.sparsity:.1f}%), which lost {final.drop:.2f} points")
    elif final.round > 0 and final.drop > budget:
        # nothing within the budget: the final model, and what most likely helps it
        # the learner holds the final round unless pruning was skipped (a resumed run
        # already over budget): only then is its checkpoint read again
        m = (learner.masks if results
             else load_checkpoint(final.checkpoint, device=device).learner.masks)
        kept = {n: float(v.mean()) for n, v in m.items()}
        names = prunable_weights(ck.learner.model)
        starved = starved_layers(ck.learner.model, kept)
        hint = advice(starved, [n for n in names if n in m] or names, args.retrain_iters)
        print(f"warning: the pruned model (round {final.round}, {100 * final.sparsity:.1f}%) "
              f"scores {final.accuracy:.2f}% on {len(val.tasks)} {split} tasks against "
              f"{curve[0].accuracy:.2f}% dense: {final.drop:.2f} points lost, more than "
              f"{budget:g}. Most likely to help: {hint}")
    return 0


def _prune_structured(args: argparse.Namespace, ck, sampler, meta_batch: int,
                      device: torch.device) -> int:
    """``--method anp-structured`` (or a channel baseline): channel rounds, physical removal,
    re-meta-training; every round saved as OUT/roundNN (the slim model), resumable."""
    from pathlib import Path

    from .structured import example_input, group_widths, structured_anp

    given = [f"--{d.replace('_', '-')}" for d, default in STRUCTURED_IGNORES.items()
             if getattr(args, d) != default]
    if given:
        raise ValueError(f"--method {args.method} does not use {', '.join(given)} (it takes "
                         "--keep/--sparsity, --rounds, --memory-budget, --round-to, "
                         "--retrain-iters, --meta-batch, --tasks, --damping, --patch-stride, "
                         "--checkpoint-every)")
    if ck.learner.extra_state():
        raise ValueError(f"--method {args.method} does not support learner "
                         f"'{ck.learner.name}' (it has per-weight state: "
                         f"{sorted(ck.learner.extra_state())[:2]})")
    keep = structured_keep(args.sparsity, args.keep)
    # traced through Torch-Pruning: a model it cannot trace is refused, naming the layer
    widths0 = group_widths(ck.learner.model, example_input(
        ck.learner.model, sampler.batch(10_000_000, 1)))
    meta = {k: ck.meta[k] for k in ("config", "data") if k in ck.meta}
    meta.update({"source_checkpoint": str(args.checkpoint),
                 "structured": {"method": args.method}})
    learner, plans = structured_anp(
        ck.learner, sampler, keep=keep, rounds=args.rounds, retrain_iters=args.retrain_iters,
        meta_batch=meta_batch, tasks=args.tasks, damping=args.damping, device=device,
        progress=not args.no_progress,
        log=lambda m: print(m, file=sys.stderr, flush=True) if is_main() else None,
        channel_criterion=STRUCTURED_METHODS[args.method], patch_stride=args.patch_stride,
        out_dir=args.out, checkpoint_every=args.checkpoint_every, meta=meta,
        memory=args.memory_budget, round_to=args.round_to)
    out = Path(args.out) / f"round{args.rounds:02d}"
    n = sum(p.numel() for p in learner.model.parameters())
    how = (f"keep {keep:.3f}" if args.memory_budget is None else
           f"keep {keep:.3f}'s weights within a memory budget of {args.memory_budget:g}")
    if args.round_to is not None:
        how += f", widths in multiples of {args.round_to}"
    print(f"{args.method}: channels {widths0} -> {plans[-1].widths} ({how}), "
          f"{n:,} parameters, {args.rounds} round(s), final checkpoint {out}")
    return 0
