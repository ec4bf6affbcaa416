"""NaN / inf guards: one error type and one check, shared by training, checkpoints and the
device format (torch only, so the device runtime can use it)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class NonFiniteError(ValueError):
    """NaN or inf where a finite number is required; the message says where."""


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an inf."""
    return [n for n, t in tensors.items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def require_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """NonFiniteError naming ``where`` and the first offending tensors, if any."""
    bad = non_finite(tensors)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise NonFiniteError(f"{where}: NaN or inf values in {', '.join(bad[:5])}{more}")
