"""Layer-wise input Hessians ``H = mean x x^T`` of Conv2d/Linear layers and their inverses.

For a layer computing ``y_j = w_j . x`` (conv: ``x`` is one unfolded k x k patch; bias-augmented
with a trailing 1 when the layer has a bias), the layer-output squared error of a weight change
``dw_j`` is ``dw_j^T H dw_j``; ``H`` is the same for every output unit ``j``. These helpers are
public because the structured pruner reuses them:

* :func:`layer_input_rows` turns one batch of layer inputs into the rows ``x`` (``[n, d]``),
  in the column order of ``weight.reshape(out, -1)`` (plus the bias column last);
* :class:`HessianAccumulator` adds ``rows^T rows`` per batch (one matmul, no per-sample loop);
* :func:`record_hessians` hooks the layers of a model and accumulates while enabled;
* :func:`damped_inverse` returns ``(H + lambda I)^-1`` via Cholesky, ``lambda`` relative to the
  mean diagonal of ``H``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_sum_, is_distributed

__all__ = ["layer_input_rows", "weight_matrix", "HessianAccumulator", "record_hessians",
           "damped_inverse", "relative_damping", "batchnorm_after", "sum_over_ranks"]


def layer_input_rows(module: nn.Module, x: torch.Tensor, patch_stride: int = 1,
                     bias: bool | None = None) -> torch.Tensor:
    """Rows ``[n, d]`` of the layer's (bias-augmented) input vectors for one input batch.

    Conv2d: ``x`` ``[B, C, H, W]`` is unfolded into ``C*kh*kw`` patches (same padding, stride and
    dilation as the layer); with ``patch_stride > 1`` only every ``patch_stride``-th patch
    position (in the flattened ``B x L`` order) is kept, like the ANP artifact's sub-sampling.
    Linear: ``x`` ``[..., in]`` is flattened to ``[n, in]`` (never sub-sampled). ``bias``
    (default: whether the layer has one) appends a column of ones.
    """
    if patch_stride < 1:
        raise ValueError(f"patch_stride must be >= 1, got {patch_stride}")
    x = x.detach()
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError("grouped/depthwise convolutions are not supported by the "
                             "layer-wise Hessian")
        if module.padding_mode != "zeros":
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding: tuple | str = 0
        else:
            padding = module.padding
        if isinstance(padding, str):  # "same"/"valid"
            if padding == "valid":
                padding = 0
            else:
                raise ValueError("padding='same' is not supported; use explicit padding")
        if patch_stride > 1:
            rows = _sampled_patches(x, module, padding, patch_stride)
        else:
            cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding,
                            stride=module.stride)                  # [B, C*kh*kw, L]
            rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # [B*L, d]
    elif isinstance(module, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
    else:
        raise TypeError(f"layer_input_rows: {type(module).__name__} is not Conv2d/Linear")
    if (module.bias is not None) if bias is None else bias:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], 1)
    return rows


def _sampled_patches(x: torch.Tensor, conv: nn.Conv2d, padding: int | tuple,
                     patch_stride: int) -> torch.Tensor:
    """Rows of ``unfold`` (``[B*L, C*kh*kw]``, positions in B x L order) at every
    ``patch_stride``-th position, gathered directly: only the kept patches are copied."""
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    xp = F.pad(x, (pw, pw, ph, ph))
    B, C, Hp, Wp = xp.shape
    oh, ow = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
    pos = torch.arange(0, B * oh * ow, patch_stride, device=x.device)
    b, r = pos // (oh * ow), pos % (oh * ow)
    iy = (r // ow)[:, None] * sh + torch.arange(kh, device=x.device)[None] * dh   # [n, kh]
    ix = (r % ow)[:, None] * sw + torch.arange(kw, device=x.device)[None] * dw    # [n, kw]
    ch = torch.arange(C, device=x.device)
    patches = xp[b[:, None, None, None], ch[None, :, None, None], iy[:, None, :, None],
                 ix[:, None, None, :]]                                           # [n, C, kh, kw]
    return patches.reshape(len(pos), C * kh * kw)


def weight_matrix(module: nn.Module, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, with_bias: bool | None = None
                  ) -> torch.Tensor:
    """``[out, d]`` matrix matching :func:`layer_input_rows` (bias column last)."""
    w = module.weight if weight is None else weight
    w = w.reshape(w.shape[0], -1)
    b = module.bias if bias is None else bias
    if (b is not None) if with_bias is None else with_bias:
        w = torch.cat([w, b.reshape(-1, 1)], 1)
    return w


class HessianAccumulator:
    """Running ``sum x x^T``, ``sum x`` and count for one layer; ``hessian()`` gives the mean
    of ``x x^T``, ``mean_input()`` the mean of ``x``."""

    def __init__(self, module: nn.Module, patch_stride: int = 1,
                 dtype: torch.dtype = torch.float64):
        self.module = module
        self.patch_stride = patch_stride
        self.dtype = dtype
        self.sum: torch.Tensor | None = None
        self.sum_rows: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        rows = layer_input_rows(self.module, x, self.patch_stride)
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.float()
        outer = (rows.T @ rows).to(self.dtype)   # one matmul per batch
        first = rows.sum(0).to(self.dtype)
        self.sum = outer if self.sum is None else self.sum + outer
        self.sum_rows = first if self.sum_rows is None else self.sum_rows + first
        self.count += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.sum is None or self.count == 0:
            raise ValueError("no inputs were recorded for this layer")
        return self.sum / self.count

    def mean_input(self) -> torch.Tensor:
        if self.sum_rows is None or self.count == 0:
            raise ValueError("no inputs were recorded for this layer")
        return self.sum_rows / self.count


def sum_over_ranks(accs: dict[str, HessianAccumulator]) -> None:
    """Under torch.distributed, make every accumulator hold the sums over all ranks (one
    all-reduce for every layer); a layer no rank saw stays empty."""
    if not is_distributed():
        return
    counts = torch.tensor([float(a.count) for a in accs.values()], dtype=torch.float64)
    tensors = [counts]
    for a in accs.values():
        if a.sum is None:
            d = weight_matrix(a.module).shape[1]
            dev = a.module.weight.device
            a.sum = torch.zeros(d, d, dtype=a.dtype, device=dev)
            a.sum_rows = torch.zeros(d, dtype=a.dtype, device=dev)
        tensors += [a.sum, a.sum_rows]
    all_reduce_sum_(tensors)
    for a, c in zip(accs.values(), counts.tolist()):
        a.count = int(c)
        if a.count == 0:
            a.sum = a.sum_rows = None


def batchnorm_after(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm that normalises each Conv2d's output: the first BatchNorm registered after
    the conv (before any other Conv2d or Linear) with as many features as the conv has output
    channels (Conv4 blocks, ResNet-12 conv/bn pairs and shortcuts)."""
    out: dict[str, nn.modules.batchnorm._BatchNorm] = {}
    pending: tuple[str, nn.Conv2d] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            pending = (name, mod)
        elif isinstance(mod, nn.Linear):
            pending = None
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and pending is not None:
            if mod.num_features == pending[1].out_channels:
                out[pending[0]] = mod
            pending = None
    return out


@contextmanager
def record_hessians(model: nn.Module, layers: Sequence[str], patch_stride: int = 1,
                    dtype: torch.dtype = torch.float64
                    ) -> Iterator[tuple[dict[str, HessianAccumulator], dict[str, bool]]]:
    """Hook the named Conv2d/Linear modules; while ``switch["on"]`` is True every forward pass
    (including ``torch.func.functional_call`` with adapted weights) adds its inputs to the
    layer's accumulator. Yields ``(accumulators, switch)``; hooks are removed on exit."""
    modules = dict(model.named_modules())
    accs = {n: HessianAccumulator(modules[n], patch_stride, dtype) for n in layers}
    switch = {"on": False}
    handles = []
    for n in layers:
        def hook(mod: nn.Module, inputs: tuple, _n: str = n) -> None:
            if switch["on"]:
                accs[_n].add(inputs[0])
        handles.append(modules[n].register_forward_pre_hook(hook))
    try:
        yield accs, switch
    finally:
        for h in handles:
            h.remove()


def relative_damping(H: torch.Tensor, damping: float) -> float:
    """Absolute damping ``damping * mean(diag(H))`` (``damping`` when the diagonal is 0)."""
    scale = float(torch.diagonal(H).mean()) if H.numel() else 0.0
    return damping * scale if scale > 0 else damping


def damped_inverse(H: torch.Tensor, damping: float = 1e-4, max_tries: int = 8
                   ) -> torch.Tensor:
    """``(H + lambda I)^-1`` with ``lambda = damping * mean(diag H)``, via Cholesky
    (``torch.cholesky_inverse``). If the factorisation fails (H singular in floating point),
    the damping is multiplied by 10 and retried."""
    lam = relative_damping(H, damping)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for _ in range(max_tries):
        L, info = torch.linalg.cholesky_ex(H + lam * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(L)
        lam = max(lam * 10, 1e-12 * max(float(torch.diagonal(H).mean()), 1.0))
    raise ValueError(f"Hessian ({H.shape[0]}x{H.shape[0]}) is not positive definite even with "
                     f"damping {lam:g}")
