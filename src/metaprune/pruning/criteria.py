"""Pruning criteria: per-weight saliency scores of every prunable Conv2d/Linear weight.

Lower score = pruned first. Every criterion returns a :class:`Scores` object; the OBS criteria
(``anp``, ``lobs``) also keep the per-layer inverse Hessians so that :meth:`Criterion.compensate`
can move the surviving weights of each output unit to the layer-wise least-squares optimum.

=================  ===================================================================
``anp``            layer-wise OBS with H from the ADAPTED network (learner's inner loop)
``lobs``           the same with H from the UN-adapted network (meta-initialisation)
``magnitude``      ``|w|``
``random``         uniform random (seeded)
``taylor-meta``    ``|dL_meta/dw * w|``, exact meta-gradient through the inner loop
``taylor-meta-fo`` the same with the first-order meta-gradient
=================  ===================================================================
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.tasks import Task
from ..distributed import all_reduce_sum_, shard
from ..learners import Adapted, Learner
from ..masks import Masks
from .hessian import (
    batchnorm_after,
    damped_inverse,
    record_hessians,
    sum_over_ranks,
    weight_matrix,
)

__all__ = ["Scores", "Criterion", "ANP", "LOBS", "Magnitude", "Random", "TaylorMeta",
           "TaylorMetaFO", "CRITERIA", "register_criterion", "get_criterion", "obs_saliency",
           "obs_compensation", "H_DATA_CHOICES", "DEFAULT_H_DATA", "DEFAULT_PATCH_STRIDE",
           "OBS_WEIGHTS_CHOICES", "layer_of"]

H_DATA_CHOICES = ("support", "query", "both")
# measured on glyphs (benchmarks/results/anp_h_data.md): with the iterative schedule and
# re-training, support+query ("both") gave the best accuracy at 85% (+0.83 +- 0.56 points over
# support-only, the artifact's choice); lobs uses the same pooled data, un-adapted
DEFAULT_H_DATA = "both"
# every 5th conv patch (the artifact's choice): with h_data="both" it keeps the scoring cost of
# Conv4-64 at 1.5x one meta-iteration (3.1x with every patch) for -0.30 +- 0.45 points
# (benchmarks/results/anp_timing.md, anp_h_data.md)
DEFAULT_PATCH_STRIDE = 5
# which weights the OBS saliency and compensation start from: the meta-initialisation (the
# method as we read it), or the mean over the scoring tasks of the ADAPTED weights (removing a
# weight zeroes it after the masked inner loop, so the adapted value is what is lost)
OBS_WEIGHTS_CHOICES = ("meta", "adapted")
JOINT_MAX_DIM = 1024  # "auto" compensation: exact joint OBS up to this input dimension


@dataclass
class Scores:
    """``scores[param name]``: saliency of each weight (weight-shaped). ``hinv[param name]``:
    ``[d, d]`` damped inverse Hessian of that layer (OBS criteria only; d includes the bias)."""

    scores: dict[str, torch.Tensor]
    hinv: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    # OBS criteria with ``obs_weights="adapted"``: the ``[out, d]`` weight matrices (bias
    # column included) that compensation starts from instead of the model's weights
    start: dict[str, torch.Tensor] = field(default_factory=dict)


def layer_of(model: nn.Module, param_name: str) -> nn.Module:
    """The module that owns the weight ``param_name`` (e.g. 'features.1.0.weight')."""
    if not param_name.endswith(".weight"):
        raise ValueError(f"'{param_name}' is not a layer weight")
    return dict(model.named_modules())[param_name[: -len(".weight")]]


def _weight_matrix_of(module: nn.Module, params: dict[str, torch.Tensor], layer: str
                      ) -> torch.Tensor:
    """``[out, d]`` matrix of ``layer`` taken from ``params`` (e.g. adapted fast weights);
    entries missing from ``params`` come from the module."""
    bias = params.get(f"{layer}.bias", module.bias) if module.bias is not None else None
    return weight_matrix(module, params.get(f"{layer}.weight", module.weight), bias).detach()


CRITERIA: dict[str, Callable[..., Criterion]] = {}


def register_criterion(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`Criterion` available to ``prune(method=name)`` and
    ``metaprune prune --method name``; its constructor's keyword arguments are its options
    (``criterion_options`` / ``--criterion-option KEY=VALUE``)."""
    def deco(cls: type) -> type:
        CRITERIA[name] = cls
        return cls

    return deco


class Criterion:
    """Base class. ``score`` rates the weights ``names`` of ``learner.model`` on ``tasks``;
    ``compensate`` (a no-op here) may update surviving weights given the new masks."""

    name = "base"
    needs_tasks = False

    def score(self, learner: Learner, tasks: Sequence[Task], names: Sequence[str],
              seed: int = 0) -> Scores:
        raise NotImplementedError

    def compensate(self, learner: Learner, scores: Scores, masks: Masks) -> dict[str, float]:
        """Adjust the surviving weights for the weights ``masks`` removes; returns per-layer
        stats (empty here). Callers then apply the masks."""
        return {}

    def options(self) -> dict:
        return {}


@register_criterion("magnitude")
class Magnitude(Criterion):
    name = "magnitude"

    def score(self, learner, tasks, names, seed=0):
        params = learner.params()
        return Scores({n: params[n].detach().abs().clone() for n in names})


@register_criterion("random")
class Random(Criterion):
    """Uniform random scores: a sanity floor. Deterministic given ``seed`` (the round)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def score(self, learner, tasks, names, seed=0):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + seed)
        params = learner.params()
        out = {}
        for n in names:
            p = params[n]
            out[n] = torch.rand(p.shape, generator=g, dtype=torch.float64).to(p.device)
        return Scores(out)

    def options(self):
        return {"seed": self.seed}


@register_criterion("taylor-meta")
class TaylorMeta(Criterion):
    """First-order Taylor of the META-objective: ``|dL_meta/dw * w|`` averaged over tasks, with
    the exact meta-gradient (through the inner loop: second order)."""

    name = "taylor-meta"
    needs_tasks = True
    first_order = False

    def score(self, learner, tasks, names, seed=0):
        if not tasks:
            raise ValueError(f"{self.name} needs at least one task")
        with torch.enable_grad():
            grads = learner.meta_gradient(list(tasks), first_order=self.first_order)
        params = learner.params()
        return Scores({n: (grads[n] * params[n].detach()).abs() for n in names})


@register_criterion("taylor-meta-fo")
class TaylorMetaFO(TaylorMeta):
    """As ``taylor-meta`` with the first-order meta-gradient (inner-loop Jacobian = I)."""

    name = "taylor-meta-fo"
    first_order = True


def obs_saliency(weight: torch.Tensor, hinv: torch.Tensor) -> torch.Tensor:
    """OBS saliency ``w[j, q]^2 / [H^-1]_qq`` for ``weight`` ``[out, d]`` (bias column included
    when hinv has it): the increase of the layer-output squared error (``dw^T H dw`` per unit,
    H = mean x x^T) when ``w[j, q]`` alone is removed with the optimal compensation."""
    diag = torch.diagonal(hinv).to(weight.dtype)
    return weight.detach() ** 2 / diag


def obs_compensation(weight: torch.Tensor, hinv: torch.Tensor, pruned: torch.Tensor,
                     mode: str = "joint", chunk_bytes: int = 1 << 28,
                     hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Change ``dw`` (``[out, d]``) of every output unit for removing the entries ``pruned``
    (bool ``[out, d]``, True = pruned, old and new).

    ``joint``: the exact OBS solution for removing the whole set Q of each unit at once,
    ``dw = -H^-1[:, Q] (H^-1[Q, Q])^-1 w[Q]`` (= least squares over the surviving weights; pruned
    entries end exactly at -w). Only a ``|Q| x |Q|`` system is solved per unit; with
    ``hessian`` (the damped H whose inverse is ``hinv``), units that keep fewer weights than
    they lose solve the equivalent ``|R| x |R|`` system of the survivors R instead,
    ``dw[R] = H[R, R]^-1 H[R, Q] w[Q]``. Units are solved in batches, padded to the largest
    system of the batch. ``single``: ANP's per-weight formula
    ``dw = -sum_q (w_q / [H^-1]_qq) H^-1[:, q]`` summed over the pruned weights (exact for one
    weight per unit, an approximation otherwise). The caller re-applies the masks.
    """
    W = weight.detach().to(hinv.dtype)
    P = pruned.to(torch.bool)
    if mode == "single":
        coef = torch.where(P, W / torch.diagonal(hinv), torch.zeros_like(W))
        return -(coef @ hinv).to(weight.dtype)
    if mode != "joint":
        raise ValueError(f"unknown compensation mode '{mode}' (joint, single, none)")
    d = W.shape[1]
    delta = torch.zeros_like(W)
    n_pruned = P.sum(1)
    units = torch.nonzero(n_pruned > 0).flatten()
    by_survivors = torch.zeros_like(P[:, 0])
    if hessian is not None:
        by_survivors = (d - n_pruned) < n_pruned
    for survivors in (False, True):
        sel = units[by_survivors[units] == survivors]
        if not len(sel):
            continue
        solve_set = ~P[sel] if survivors else P[sel]                # [b, d]
        sizes = solve_set.sum(1)
        order = torch.argsort(sizes)
        sel, solve_set, sizes = sel[order], solve_set[order], sizes[order]
        per = max(1, chunk_bytes // (max(1, int(sizes.max())) * d * hinv.element_size()))
        for s in range(0, len(sel), per):
            u, S, k = sel[s: s + per], solve_set[s: s + per], sizes[s: s + per]
            kmax = int(k.max())
            # each unit's solve indices first (stable: in column order), padded to kmax
            idx = torch.argsort((~S).to(torch.int8), dim=1, stable=True)[:, :kmax]
            valid = (torch.arange(kmax, device=W.device)[None] < k[:, None]).to(hinv.dtype)
            w = W[u]
            if survivors:
                rhs = ((w * P[u]) @ hessian).gather(1, idx)          # (H[R, Q] w[Q])
                z = _padded_solve(hessian, idx, valid, rhs)
                du = torch.where(P[u], -w, torch.zeros_like(w))
                du.scatter_add_(1, idx, z * valid)
                delta[u] = du
            else:
                z = _padded_solve(hinv, idx, valid, w.gather(1, idx))
                delta[u] = -torch.einsum("bk,bkd->bd", z * valid, hinv[idx])
    return delta.to(weight.dtype)


def _padded_solve(M: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor, rhs: torch.Tensor
                  ) -> torch.Tensor:
    """Solve ``M[I_b, I_b] z_b = rhs_b`` for every row b (indices ``idx[b]``, of which the
    first ``valid[b].sum()`` count; the padding solves an identity block and returns 0)."""
    A = (M[idx[:, :, None], idx[:, None, :]] * valid[:, :, None] * valid[:, None, :]
         + torch.diag_embed(1 - valid))
    return torch.linalg.solve(A, (rhs * valid).unsqueeze(-1)).squeeze(-1)


class _OBS(Criterion):
    """Layer-wise Optimal Brain Surgeon (shared by ``anp`` and ``lobs``).

    H of layer l = mean over tasks, samples and (sub-sampled) patches of ``x x^T`` of the
    bias-augmented layer inputs, recorded while the learner's network runs on the tasks' data
    (support, query or both; each set as its own batch, as the learner uses it), either at the
    ADAPTED weights (``adapted=True``) or at the meta-initialisation. Damping is relative to the
    mean diagonal of H. ``obs_weights="adapted"`` (anp only) scores ``E_tasks[w'^2] /
    [H^-1]_qq`` with the adapted weights ``w'`` and compensates from their task mean.
    ``bn_aware=True`` divides the saliency of each output channel of a conv that feeds a
    BatchNorm by that channel's output variance (from H and the mean input) and multiplies it by
    the BatchNorm's gamma^2: the squared error AFTER normalisation, which is what the next layer
    sees (plain OBS ranks channels with a small pre-BN variance as cheap although BatchNorm
    scales them back up). Layers that never see an input (e.g. the unused head of ProtoNet)
    fall back to H = I (magnitude) without compensation.
    """

    adapted = True
    needs_tasks = True

    def __init__(self, h_data: str = DEFAULT_H_DATA, damping: float = 1e-4,
                 patch_stride: int = DEFAULT_PATCH_STRIDE, compensation: str = "auto",
                 obs_weights: str = "meta", bn_aware: bool = False):
        if h_data not in H_DATA_CHOICES:
            raise ValueError(f"h_data must be one of {H_DATA_CHOICES}, got '{h_data}'")
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        if int(patch_stride) < 1:
            raise ValueError(f"patch_stride must be >= 1, got {patch_stride}")
        if compensation not in ("auto", "joint", "single", "none"):
            raise ValueError(f"compensation must be auto, joint, single or none, "
                             f"got '{compensation}'")
        if obs_weights not in OBS_WEIGHTS_CHOICES:
            raise ValueError(f"obs_weights must be one of {OBS_WEIGHTS_CHOICES}, "
                             f"got '{obs_weights}'")
        if obs_weights == "adapted" and not self.adapted:
            raise ValueError(f"{self.name} scores the un-adapted network: obs_weights='adapted' "
                             "is for anp")
        self.h_data = h_data
        self.obs_weights = obs_weights
        self.bn_aware = bool(bn_aware)
        self.damping = float(damping)
        self.patch_stride = int(patch_stride)
        self.compensation = compensation

    def options(self):
        opts = {"h_data": self.h_data, "damping": self.damping,
                "patch_stride": self.patch_stride, "compensation": self.compensation}
        if self.obs_weights != "meta":
            opts["obs_weights"] = self.obs_weights
        if self.bn_aware:
            opts["bn_aware"] = True
        return opts

    def hessians(self, learner: Learner, tasks: Sequence[Task], names: Sequence[str],
                 adapted_moments: dict[str, list[torch.Tensor]] | None = None,
                 input_means: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
        """Undamped ``H`` (float64) of each layer whose weight is in ``names`` (param names);
        layers that saw no input are missing from the result. With ``adapted_moments`` (an
        empty dict), also fills it with ``[mean w', mean w'^2]`` over the tasks of each layer's
        ``[out, d]`` adapted weight matrix (bias column included); with ``input_means``, with
        the mean input row of each layer (the vector whose outer products make H)."""
        if not tasks:
            raise ValueError(f"{self.name} needs at least one task")
        layers = [n[: -len(".weight")] for n in names]
        modules = dict(learner.model.named_modules())
        if adapted_moments is not None:
            for ly in layers:
                w0 = _weight_matrix_of(modules[ly], {}, ly).double()
                adapted_moments[f"{ly}.weight"] = [torch.zeros_like(w0), torch.zeros_like(w0)]
        with record_hessians(learner.model, layers, self.patch_stride) as (accs, switch):
            for t in shard(tasks):  # this rank's share; summed over the ranks below
                adapted = self.scoring_adaptation(learner, t)
                if adapted_moments is not None:
                    for ly in layers:
                        w = _weight_matrix_of(modules[ly], adapted.params, ly).double()
                        m = adapted_moments[f"{ly}.weight"]
                        m[0] += w          # sums now, divided once summed over the ranks
                        m[1] += w ** 2
                with torch.no_grad():
                    switch["on"] = True
                    try:
                        if self.h_data in ("support", "both"):
                            learner.predict(adapted, t.support_x)
                        if self.h_data in ("query", "both"):
                            learner.predict(adapted, t.query_x)
                    finally:
                        switch["on"] = False
        sum_over_ranks(accs)
        if adapted_moments is not None:
            all_reduce_sum_(t for m in adapted_moments.values() for t in m)
            for m in adapted_moments.values():
                m[0] /= len(tasks)
                m[1] /= len(tasks)
        if input_means is not None:
            input_means.update({f"{ly}.weight": a.mean_input() for ly, a in accs.items()
                                if a.count > 0})
        return {f"{ly}.weight": a.hessian() for ly, a in accs.items() if a.count > 0}

    def scoring_adaptation(self, learner: Learner, task: Task) -> Adapted:
        """The (detached) adapted parameters this criterion records H under: the task-adapted
        ones (ANP) or the un-adapted ones (L-OBS)."""
        with torch.enable_grad():
            a = learner.adapt(task.support_x, task.support_y,
                              steps=None if self.adapted else 0, create_graph=False)
        a.params = {n: p.detach() for n, p in a.params.items()}
        if a.prototypes is not None:
            a.prototypes = a.prototypes.detach()
        return a

    def score(self, learner, tasks, names, seed=0):
        moments: dict[str, list[torch.Tensor]] | None = (
            {} if self.obs_weights == "adapted" else None)
        means: dict[str, torch.Tensor] = {}
        H = self.hessians(learner, tasks, names, moments, means)
        model = learner.model
        bns = batchnorm_after(model) if self.bn_aware else {}
        scores, hinv, start, missing = {}, {}, {}, []
        for n in names:
            mod = layer_of(model, n)
            w = weight_matrix(mod).detach()
            if n not in H:
                missing.append(n)
                scores[n] = mod.weight.detach().double() ** 2
                continue
            hi = damped_inverse(H[n], self.damping)
            hinv[n] = hi
            if moments is None:
                s = obs_saliency(w.double(), hi)
            else:  # E[w'^2] / [H^-1]_qq, and compensation from E[w']
                s = moments[n][1] / torch.diagonal(hi)
                start[n] = moments[n][0].to(w.dtype)
            bn = bns.get(n[: -len(".weight")])
            if bn is not None:
                s = s * _bn_gain(bn, w.double(), H[n], means[n])[:, None]
            scores[n] = s[:, : mod.weight[0].numel()].reshape(mod.weight.shape)
        if missing:
            warnings.warn(f"{self.name}: layers {missing} received no input while running the "
                          "learner on the tasks; they are scored by magnitude", stacklevel=2)
        return Scores(scores, hinv, {"no_input_layers": missing}, start)

    def compensate(self, learner, scores, masks):
        if self.compensation == "none":
            return {}
        model = learner.model
        stats = {}
        for n, hi in scores.hinv.items():
            if n not in masks:
                continue
            mod = layer_of(model, n)
            d = hi.shape[0]
            mode = self.compensation
            if mode == "auto":
                mode = "joint" if d <= JOINT_MAX_DIM else "single"
            k = mod.weight[0].numel()
            pruned = torch.zeros(mod.weight.shape[0], d, dtype=torch.bool,
                                 device=mod.weight.device)
            pruned[:, :k] = masks[n].reshape(mod.weight.shape[0], -1) == 0
            if not bool(pruned.any()):
                continue
            w = scores.start.get(n, weight_matrix(mod).detach())
            # the damped H itself, for units that keep fewer weights than they lose
            h = None
            if mode == "joint":
                L, info = torch.linalg.cholesky_ex(hi)
                h = torch.cholesky_inverse(L) if int(info) == 0 else None  # else: pruned block
            delta = obs_compensation(w, hi, pruned, mode, hessian=h)
            with torch.no_grad():
                mod.weight.add_(delta[:, :k].reshape(mod.weight.shape))
                if d > k and mod.bias is not None:
                    mod.bias.add_(delta[:, k])
            stats[n] = float(delta.norm() / w.norm().clamp_min(1e-30))
        return stats


def _bn_gain(bn: nn.Module, w: torch.Tensor, H: torch.Tensor, mean: torch.Tensor
             ) -> torch.Tensor:
    """``gamma^2 / (var + eps)`` per output channel of a layer ``w`` (``[out, d]``) whose
    output ``w x`` is normalised by ``bn``: the variance is ``w H w^T - (w mean)^2`` over all
    recorded inputs pooled (BatchNorm normalises each batch by its own statistics; the pooled
    variance stands for them), or the running variance when ``bn`` uses running statistics."""
    if not bn.training and bn.running_var is not None:
        var = bn.running_var.detach().double()
    else:
        var = ((w @ H) * w).sum(1) - (w @ mean) ** 2
    gamma2 = bn.weight.detach().double() ** 2 if bn.weight is not None else torch.ones_like(var)
    return gamma2 / (var.clamp_min(0) + bn.eps)


@register_criterion("anp")
class ANP(_OBS):
    """Adaptation-aware pruning: OBS with H recorded under the ADAPTED weights."""

    name = "anp"
    adapted = True


@register_criterion("lobs")
class LOBS(_OBS):
    """Layer-wise OBS with the conventional loss: H from the UN-adapted network."""

    name = "lobs"
    adapted = False




def get_criterion(name: str, **opts) -> Criterion:
    """Build a criterion by name; options a criterion does not take are rejected."""
    if name not in CRITERIA:
        raise ValueError(f"unknown pruning method '{name}'; choose from {sorted(CRITERIA)}")
    params = inspect.signature(CRITERIA[name]).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(opts) - set(params))
        if unknown:
            raise ValueError(f"method '{name}' does not take options {unknown} (its options: "
                             f"{sorted(params)})")
    try:
        return CRITERIA[name](**opts)
    except TypeError as e:
        raise ValueError(f"method '{name}': bad options {opts}: {e}") from e
