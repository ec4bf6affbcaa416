"""Accuracy-budgeted pruning: paired validation of pruned rounds against the dense model.

``metaprune prune --max-drop P`` evaluates the dense model and every finished round on a fixed
list of VALIDATION tasks (a split whose classes are disjoint from the test split's), stops
once ``--patience`` rounds in a row exceed ``P`` points of paired accuracy drop (one noisy
round does not end the search), and names the sparsest round within the budget; the test
split is never used to choose. Without ``--max-drop`` the same validation of the dense and the
final model guards against useless output (:func:`advice`). Results are cached per model
under ``OUT/validation/`` (keyed by the task list's fingerprint), so a resumed run does not
evaluate twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..distributed import barrier, is_main, same_on_all_ranks
from ..evaluation import EvalResult, evaluate, paired_difference
from ..io import atomic_write_text
from ..learners import Learner

__all__ = ["DEFAULT_GUARD_DROP", "DEFAULT_PATIENCE", "ValidationPoint", "Validator", "advice",
           "best_round", "budget_exhausted", "write_curve"]

# without --max-drop, a final model more than this many points below dense is reported
DEFAULT_GUARD_DROP = 1.0
# --max-drop stops after this many consecutive rounds over budget. The validation curves of
# the 5- and 20-way out-of-the-box runs (OUT/validation.json) never came back within budget
# after a round over it, so the default stops at the first; a swing seen once on 20-way came
# from the resumed-run mask bug fixed on 2026-12-01 (docs/parallel.md), not from noise.
DEFAULT_PATIENCE = 1


@dataclass
class ValidationPoint:
    round: int                 # 0: the dense model
    sparsity: float            # over the prunable weights
    accuracy: float            # percent
    ci95: float
    drop: float                # dense minus this model, paired, in points
    drop_ci95: float
    checkpoint: str | None


class Validator:
    """Evaluates models on one fixed validation task list and caches the per-task results."""

    def __init__(self, dataset, tasks, out_dir: str | Path, device: str | torch.device,
                 progress: bool):
        self.dataset, self.tasks, self.device, self.progress = dataset, tasks, device, progress
        self.dir = Path(out_dir) / "validation"
        self.dense: EvalResult | None = None

    def result(self, name: str, learner: Learner) -> EvalResult:
        path = self.dir / f"{name}.json"
        cached = path.exists() and EvalResult.load(path).matches(self.tasks, learner)
        if same_on_all_ranks(int(cached), f"whether '{path}' holds this evaluation"):
            return EvalResult.load(path)
        res = evaluate(learner, self.dataset, self.tasks, device=self.device,
                       progress=self.progress, desc=f"validate {name}")
        if is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            res.save(path)
        barrier()
        return res

    def point(self, rnd: int, sparsity: float, learner: Learner,
              checkpoint: str | None = None) -> ValidationPoint:
        if rnd == 0:
            self.dense = self.result("dense", learner)
        if self.dense is None:
            raise RuntimeError("validate the dense model (round 0) first")
        res = self.dense if rnd == 0 else self.result(f"round{rnd:02d}", learner)
        d = paired_difference(self.dense, res)
        return ValidationPoint(rnd, sparsity, 100 * res.accuracy, 100 * res.ci95,
                               100 * d.mean, 100 * d.ci95, checkpoint)


def best_round(curve: list[ValidationPoint], max_drop: float) -> ValidationPoint | None:
    """The sparsest pruned round whose drop is within ``max_drop`` points (None: none is)."""
    ok = [p for p in curve if p.round > 0 and p.drop <= max_drop]
    return max(ok, key=lambda p: (p.sparsity, p.round)) if ok else None


def budget_exhausted(curve: list[ValidationPoint], max_drop: float, patience: int) -> bool:
    """Whether the last ``patience`` pruned rounds of ``curve`` all lost more than
    ``max_drop`` points: then pruning further is not worth its time."""
    tail = [p for p in curve if p.round > 0][-patience:]
    return len(tail) == patience and all(p.drop > max_drop for p in tail)


def write_curve(out_dir: str | Path, curve: list[ValidationPoint], max_drop: float | None,
                best: ValidationPoint | None, split: str) -> None:
    if is_main():
        atomic_write_text(Path(out_dir) / "validation.json", json.dumps(
            {"split": split, "max_drop": max_drop, "curve": [asdict(p) for p in curve],
             "best": None if best is None else asdict(best)}, indent=2))


def advice(starved: Mapping[str, tuple[float, int]], names: list[str],
           retrain_iters: int) -> str:
    """The setting most likely to help a pruned model that lost too much: keep the layers
    whose units keep almost no input dense (``starved``, from ``pruner.starved_layers``;
    Omniglot, setting A: that made most of the difference at 85-95%), else re-train longer
    per round (setting B: the re-training budget decided most of the rest), else prune less."""
    if starved:
        flags = [f for f, n in (("--exclude-first", names[0]), ("--exclude-last", names[-1]))
                 if n in starved]
        what = ", ".join(f"'{n}' keeps {kept:.1f} of its {fan_in} inputs per unit"
                         for n, (kept, fan_in) in starved.items())
        fix = " ".join(flags) if flags else "--layer-ratio NAME=RATIO for those layers"
        return f"{what}; try {fix} (benchmarks/README.md, setting A)"
    if retrain_iters < 200:
        return (f"re-training was {retrain_iters} iterations per round; try --retrain-iters "
                f"{max(200, 2 * retrain_iters)} (benchmarks/README.md, setting B)")
    return ("try a lower --sparsity, --max-drop to find the sparsest model within budget, or "
            "a wider model (on 20-way Omniglot more re-training did not help a Conv4-32 at 85%;"
            " a Conv4-64 kept its accuracy: docs/pruning.md, out of the box)")
