"""Pruning masks: ``{parameter name: 0/1 float tensor of the parameter's shape}``.

A name missing from the dict is dense. Every place that changes weights (inner loop, outer
optimiser step, test-time adaptation, the device runtime) multiplies by these masks so that a
pruned weight stays exactly 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

Masks = dict[str, torch.Tensor]
PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module, include_first: bool = True,
                    include_last: bool = True) -> list[str]:
    """Names of the Conv2d/Linear modules whose weights may be pruned, in forward order."""
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    if not include_first and names:
        names = names[1:]
    if not include_last and names:
        names = names[:-1]
    return names


def prunable_weights(model: nn.Module, include_first: bool = True,
                     include_last: bool = True) -> list[str]:
    """Parameter names (``layer.weight``) of the prunable layers."""
    return [f"{n}.weight" for n in prunable_layers(model, include_first, include_last)]


def dense_masks(model: nn.Module, names: Iterable[str]) -> Masks:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.float32).detach() for n in names}


def validate_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for n, m in masks.items():
        if n not in params:
            raise ValueError(f"mask for '{n}', which is not a parameter of "
                             f"{type(model).__name__}")
        if m.shape != params[n].shape:
            raise ValueError(f"mask '{n}' has shape {tuple(m.shape)}, parameter has "
                             f"{tuple(params[n].shape)}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"mask '{n}' holds values other than 0 and 1")


@torch.no_grad()
def apply_masks(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries of ``params`` in place."""
    for n, m in masks.items():
        params[n].mul_(m.to(params[n].device, params[n].dtype))


def mask_grad(name: str, grad: torch.Tensor, masks: Mapping[str, torch.Tensor] | None
              ) -> torch.Tensor:
    """Masked gradient (differentiable; used inside the inner loop)."""
    if masks is None or name not in masks:
        return grad
    return grad * masks[name].to(grad.device, grad.dtype)


@torch.no_grad()
def masked_optimizer_step(optimizer: torch.optim.Optimizer,
                          named_params: Mapping[str, nn.Parameter],
                          masks: Mapping[str, torch.Tensor] | None) -> None:
    """One optimiser step that cannot revive a pruned weight.

    The gradient is masked, every per-parameter optimiser state tensor of the parameter's shape
    (Adam's moments, SGD's momentum buffer) is masked before and after the step, and the
    parameter itself is re-masked after the step (guards against weight decay variants).
    """
    if not masks:
        optimizer.step()
        return
    masked = []
    for n, m in masks.items():
        p = named_params.get(n)
        if p is None:
            continue
        m = m.to(p.device, p.dtype)
        if p.grad is not None:
            p.grad.mul_(m)
        masked.append((p, m))
    for p, m in masked:
        _mask_state(optimizer, p, m)
    optimizer.step()
    for p, m in masked:
        p.mul_(m)
        _mask_state(optimizer, p, m)


def _mask_state(optimizer: torch.optim.Optimizer, p: torch.Tensor, m: torch.Tensor) -> None:
    for v in optimizer.state.get(p, {}).values():
        if torch.is_tensor(v) and v.shape == p.shape:
            v.mul_(m)


def sparsity_table(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[dict]:
    """Per-parameter rows: total, pruned, sparsity; plus a global row over ALL parameters
    (prunable or not) and one over the prunable ones."""
    rows = []
    total = pruned = prunable_total = 0
    for n, p in model.named_parameters():
        k = p.numel()
        z = int((masks[n] == 0).sum()) if n in masks else 0
        total += k
        pruned += z
        if n in masks:
            prunable_total += k
            rows.append({"name": n, "shape": list(p.shape), "total": k, "pruned": z,
                         "sparsity": z / k})
    rows.append({"name": "[prunable weights]", "shape": [], "total": prunable_total,
                 "pruned": pruned, "sparsity": pruned / max(prunable_total, 1)})
    rows.append({"name": "[all parameters]", "shape": [], "total": total, "pruned": pruned,
                 "sparsity": pruned / max(total, 1)})
    return rows


def format_sparsity_table(rows: list[dict]) -> str:
    w = max(len(r["name"]) for r in rows)
    out = [f"{'parameter':<{w}}  {'shape':<18} {'total':>9} {'pruned':>9} {'sparsity':>8}"]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        out.append(f"{r['name']:<{w}}  {shape:<18} {r['total']:>9} {r['pruned']:>9} "
                   f"{100 * r['sparsity']:>7.2f}%")
    return "\n".join(out)
