"""From scores to masks with EXACT counts, and pruning schedules.

* ``layerwise`` (ANP's default): in every layer, ``k = round(ratio * n)`` weights are pruned,
  counting the weights pruned in earlier rounds (they are always kept pruned).
* ``global``: ``round(ratio * N)`` weights over all listed layers by one ranking of the raw
  scores (scale-dependent across layers, as usual for global pruning).
* per-layer ratios given by the user override the common ratio (layerwise only).

``round`` is round-half-up (``floor(x + 0.5)``). Ties are broken deterministically by a stable
sort: lower flat index first (global: earlier layer first).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..masks import Masks

__all__ = ["exact_count", "select_layerwise", "select_global", "allocate", "parse_schedule",
           "cumulative_targets", "round_ratios", "DEFAULT_SCHEDULE"]

DEFAULT_SCHEDULE = [0.1] * 8 + [0.05]


def exact_count(ratio: float, n: int) -> int:
    """``round(ratio * n)`` (half up, robust to float noise like 0.1 * 3)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sparsity ratio must be in [0, 1], got {ratio}")
    return min(n, int(math.floor(ratio * n + 0.5 + 1e-9)))


def _prepared(name: str, score: torch.Tensor, current: torch.Tensor | None) -> torch.Tensor:
    s = score.detach().flatten().to(torch.float64).cpu()
    if torch.isnan(s).any():
        raise ValueError(f"scores of '{name}' contain NaN")
    if current is not None:
        s = s.masked_fill(current.detach().flatten().cpu() == 0, -math.inf)
    return s


def _lowest_k_mask(flat_scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat 0/1 mask with the ``k`` lowest scores at 0 (ties: lower index first)."""
    order = torch.argsort(flat_scores, stable=True)
    m = torch.ones(flat_scores.numel(), dtype=torch.float32)
    m[order[:k]] = 0.0
    return m


def select_layerwise(scores: Mapping[str, torch.Tensor], ratios: Mapping[str, float],
                     current: Masks | None = None) -> Masks:
    """Masks pruning exactly ``round(ratios[name] * numel)`` lowest-scored weights per layer."""
    masks: Masks = {}
    for name, score in scores.items():
        cur = (current or {}).get(name)
        s = _prepared(name, score, cur)
        k = exact_count(float(ratios[name]), s.numel())
        already = 0 if cur is None else int((cur == 0).sum())
        if k < already:
            raise ValueError(f"'{name}': target sparsity {ratios[name]:.4f} ({k} weights) is "
                             f"below the {already} weights already pruned")
        masks[name] = _lowest_k_mask(s, k).reshape(score.shape).to(score.device)
    return masks


def select_global(scores: Mapping[str, torch.Tensor], ratio: float,
                  current: Masks | None = None) -> Masks:
    """Masks pruning exactly ``round(ratio * total)`` lowest-scored weights over all layers."""
    names = list(scores)
    flat = [_prepared(n, scores[n], (current or {}).get(n)) for n in names]
    allv = torch.cat(flat)
    k = exact_count(ratio, allv.numel())
    already = int(torch.isinf(allv).sum())
    if k < already:
        raise ValueError(f"global target sparsity {ratio:.4f} ({k} weights) is below the "
                     f"{already} weights already pruned")
    m = _lowest_k_mask(allv, k)
    masks: Masks = {}
    start = 0
    for n, f in zip(names, flat, strict=True):
        masks[n] = m[start: start + f.numel()].reshape(scores[n].shape).to(scores[n].device)
        start += f.numel()
    return masks


def allocate(scores: Mapping[str, torch.Tensor], ratio: float | Mapping[str, float],
             mode: str = "layerwise", current: Masks | None = None) -> Masks:
    """Dispatch: ``mode`` is ``layerwise`` or ``global``; ``ratio`` a float or per-layer dict."""
    if mode == "layerwise":
        if isinstance(ratio, Mapping):
            missing = set(scores) - set(ratio)
            if missing:
                raise ValueError(f"no ratio for layers {sorted(missing)}")
            ratios = dict(ratio)
        else:
            ratios = {n: float(ratio) for n in scores}
        return select_layerwise(scores, ratios, current)
    if mode == "global":
        if isinstance(ratio, Mapping):
            raise ValueError("per-layer ratios need allocation 'layerwise'")
        return select_global(scores, float(ratio), current)
    raise ValueError(f"unknown allocation '{mode}' (layerwise, global)")


def parse_schedule(spec: str | Sequence[float] | None) -> list[float] | None:
    """``"0.1x8,0.05"`` -> [0.1]*8 + [0.05]; ``"one-shot"`` -> None; a list is returned as is.
    ``None``/``"default"`` -> :data:`DEFAULT_SCHEDULE`. Entries are per-round INCREMENTS."""
    if spec is None or spec == "default":
        return list(DEFAULT_SCHEDULE)
    if isinstance(spec, str):
        if spec in ("one-shot", "oneshot"):
            return None
        out: list[float] = []
        for part in spec.split(","):
            part = part.strip()
            try:
                if "x" in part:
                    v, r = part.split("x")
                    out += [float(v)] * int(r)
                elif part:
                    out.append(float(part))
            except ValueError as e:
                raise ValueError(f"bad schedule entry '{part}' in '{spec}' (expected e.g. "
                                 "'0.1x8,0.05' or 'one-shot')") from e
        spec = out
    steps = [float(v) for v in spec]
    if not steps or any(v <= 0 for v in steps):
        raise ValueError(f"schedule needs positive increments, got {steps}")
    return steps


def cumulative_targets(sparsity: float, schedule: Sequence[float] | None) -> list[float]:
    """Per-round cumulative targets: the schedule's running sums capped at ``sparsity``, plus a
    last round reaching ``sparsity`` if the schedule stops short. One-shot: ``[sparsity]``."""
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    if schedule is None:
        return [sparsity]
    out, c = [], 0.0
    for v in schedule:
        c = round(c + v, 10)
        t = min(c, sparsity)
        if not out or t > out[-1]:
            out.append(t)
        if c >= sparsity:
            break
    if out[-1] < sparsity:
        out.append(sparsity)
    return out


def round_ratios(names: Sequence[str], target: float, final: float,
                 layer_ratios: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-layer ratios of a round with cumulative ``target`` (of the final ``final``): the
    common ratio, or each user ratio scaled by ``target / final``."""
    out = {}
    for n in names:
        r = (layer_ratios or {}).get(n)
        out[n] = target if r is None else float(r) * target / final
    unknown = set(layer_ratios or {}) - set(names)
    if unknown:
        raise ValueError(f"per-layer ratios for unknown/unprunable layers {sorted(unknown)}")
    return out
