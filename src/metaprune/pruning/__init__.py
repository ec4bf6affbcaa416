"""Adaptation-aware pruning (ANP) and baselines for meta-trained networks.

Quick use on any ``nn.Module`` wrapped in a learner::

    from metaprune.pruning import prune
    results = prune(learner, sampler, method="anp", sparsity=0.85, retrain_iters=100,
                    out_dir="runs/anp")

Building blocks: :mod:`.hessian` (layer input Hessians, damped Cholesky inverses),
:mod:`.criteria` (``get_criterion``), :mod:`.allocation` (exact-count masks, schedules),
:mod:`.pruner` (rounds, re-meta-training, checkpoints, resume), :mod:`.diagnostics`
(``adaptation_shift``: how much adaptation changes what ANP sees, against task noise).
"""

from .allocation import (
    DEFAULT_SCHEDULE,
    allocate,
    cumulative_targets,
    exact_count,
    parse_schedule,
    select_global,
    select_layerwise,
)
from .criteria import (
    ANP,
    CRITERIA,
    DEFAULT_H_DATA,
    DEFAULT_PATCH_STRIDE,
    H_DATA_CHOICES,
    LOBS,
    Criterion,
    Magnitude,
    Random,
    Scores,
    TaylorMeta,
    TaylorMetaFO,
    get_criterion,
    obs_compensation,
    obs_saliency,
)
from .diagnostics import adaptation_shift
from .hessian import (
    HessianAccumulator,
    batchnorm_after,
    damped_inverse,
    layer_input_rows,
    record_hessians,
    relative_damping,
    weight_matrix,
)
from .pruner import PruneConfig, RoundResult, prune, prune_step, restore_checkpoint

__all__ = [
    "ANP", "LOBS", "CRITERIA", "DEFAULT_H_DATA", "DEFAULT_PATCH_STRIDE", "DEFAULT_SCHEDULE",
    "H_DATA_CHOICES",
    "Criterion", "HessianAccumulator", "Magnitude", "PruneConfig", "Random", "RoundResult",
    "Scores", "TaylorMeta", "TaylorMetaFO", "adaptation_shift", "allocate", "batchnorm_after",
    "cumulative_targets", "damped_inverse",
    "exact_count", "get_criterion", "layer_input_rows", "obs_compensation", "obs_saliency",
    "parse_schedule", "prune", "prune_step", "record_hessians", "relative_damping",
    "restore_checkpoint", "select_global", "select_layerwise", "weight_matrix",
]
