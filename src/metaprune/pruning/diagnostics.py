"""Does adaptation-awareness matter for this model? ANP's H against L-OBS's H, layer by layer.

ANP and L-OBS differ only in the network that records each layer's inputs: adapted to each
scoring task (anp) or the meta-initialisation (lobs). Where the inner loop barely moves the
layers below a layer, both see almost the same H and prune that layer alike; the difference
that matters is the one beyond the sampling noise of the scoring tasks themselves, so every
adapted-vs-un-adapted number comes with the same number for two disjoint task batches.

    from metaprune.pruning.diagnostics import adaptation_shift
    rows = adaptation_shift(learner, tasks_a, tasks_b, target=0.85)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.tasks import Task
from ..learners import Learner
from ..masks import prunable_weights
from .allocation import allocate
from .criteria import ANP, LOBS, layer_of, obs_saliency
from .hessian import damped_inverse, weight_matrix


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties broken by position, no correction:
    meant for continuous scores)."""
    if a.shape != b.shape or a.dim() != 1 or a.numel() < 2:
        raise ValueError(f"spearman needs two 1-D tensors of the same length >= 2, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-300))


def _rel_fro(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _share(ref: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of ``ref``'s True entries that ``other`` has too (1.0 when ``ref`` has none)."""
    n = int(ref.sum())
    return float((ref & other).sum()) / n if n else 1.0


def adaptation_shift(learner: Learner, tasks_a: Sequence[Task], tasks_b: Sequence[Task],
                     target: float, names: Sequence[str] | None = None, **obs_options
                     ) -> list[dict]:
    """One row per layer (``names``: weight names, default every prunable layer) with:

    * ``weight_change``: ``||W' - W|| / ||W||`` after the learner's inner loop, mean over
      ``tasks_a``;
    * ``dH_adapt``: ``||H_anp - H_lobs||_F / ||H_lobs||_F`` on ``tasks_a``; ``dH_tasks``: the
      same for L-OBS's H on ``tasks_b`` against ``tasks_a`` (the sampling-noise reference);
    * ``rank_corr_adapt`` / ``rank_corr_tasks``: Spearman correlation of the OBS saliencies of
      the layer's unpruned weights, anp vs lobs on ``tasks_a`` / anp on ``tasks_a`` vs
      ``tasks_b``;
    * ``agree_adapt`` / ``agree_tasks``: of the weights that anp on ``tasks_a`` prunes to reach
      ``target`` (the layer's current mask kept), the fraction lobs on ``tasks_a`` / anp on
      ``tasks_b`` prunes too; ``agree_tasks_lobs``: lobs on ``tasks_a`` vs ``tasks_b``.

    ``obs_options`` (``h_data``, ``damping``, ``patch_stride``) go to both criteria. A layer
    fed by the network's input (the first layer) always has ``dH_adapt`` 0.
    """
    if not tasks_a or not tasks_b:
        raise ValueError("adaptation_shift needs two non-empty task batches")
    names = list(prunable_weights(learner.model) if names is None else names)
    anp, lobs = ANP(**obs_options), LOBS(**obs_options)
    H = {"anp_a": anp.hessians(learner, tasks_a, names),
         "lobs_a": lobs.hessians(learner, tasks_a, names),
         "anp_b": anp.hessians(learner, tasks_b, names),
         "lobs_b": lobs.hessians(learner, tasks_b, names)}
    missing = [n for n in names if any(n not in h for h in H.values())]
    if missing:
        raise ValueError(f"layers {missing} received no input on the tasks (e.g. a ProtoNet "
                         "head): leave them out of names")
    meta = {n: p.detach() for n, p in learner.params().items()}
    change = dict.fromkeys(names, 0.0)
    for t in tasks_a:
        with torch.enable_grad():
            adapted = learner.adapt(t.support_x, t.support_y, create_graph=False).params
        for n in names:
            change[n] += float((adapted[n].detach() - meta[n]).norm()
                               / meta[n].norm().clamp_min(1e-300)) / len(tasks_a)
    rows = []
    for n in names:
        mod = layer_of(learner.model, n)
        w = weight_matrix(mod).detach().double()
        k = mod.weight[0].numel()
        sal = {key: obs_saliency(w, damped_inverse(h[n], anp.damping))[:, :k]
               .reshape(mod.weight.shape) for key, h in H.items()}
        mask = learner.masks.get(n, torch.ones_like(mod.weight)).detach()
        alive = mask.flatten().cpu() != 0
        newly = {key: (allocate({n: s}, target, "layerwise", {n: mask})[n].flatten().cpu() == 0)
                 & alive for key, s in sal.items()}
        flat = {key: s.flatten().cpu()[alive] for key, s in sal.items()}
        rows.append({
            "layer": n, "sparsity": 1 - float(alive.double().mean()), "target": float(target),
            "weight_change": change[n],
            "dH_adapt": _rel_fro(H["anp_a"][n], H["lobs_a"][n]),
            "dH_tasks": _rel_fro(H["lobs_b"][n], H["lobs_a"][n]),
            "rank_corr_adapt": spearman(flat["anp_a"], flat["lobs_a"]),
            "rank_corr_tasks": spearman(flat["anp_a"], flat["anp_b"]),
            "agree_adapt": _share(newly["anp_a"], newly["lobs_a"]),
            "agree_tasks": _share(newly["anp_a"], newly["anp_b"]),
            "agree_tasks_lobs": _share(newly["lobs_a"], newly["lobs_b"])})
    return rows
