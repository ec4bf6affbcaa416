"""ExecuTorch export: an ``.mpz`` model as one ``.pte`` program that ADAPTS on the device.

The program has these methods (names in :mod:`metaprune.deploy.executorch_runtime`):

* ``adapt_loss(support_x, support_y) -> (loss,)``, a training method (forward + backward,
  exported with ``torch.export.experimental._export_forward_backward``): the support set's
  cross-entropy under the stored test-time rule. Its trainable parameters are exactly the
  adapting ones (all weights for MAML/FOMAML/Reptile and Meta-SGD, the head for ANIL, the
  zero-initialised context for CAVIA; ProtoNet has no training method). Each adapting
  parameter ``p`` enters the network as ``p.detach() + s * (p - p.detach())`` with
  ``s = lr * mask``: the same value as ``p``, and gradient ``s * dL/dp``. So plain SGD with
  learning rate 1 (ExecuTorch's SGD optimiser, Python or C++) is the runtime's masked step
  ``p <- p - lr * (mask * dL/dp)``, per-weight ``lr`` for Meta-SGD: pruned weights get a zero
  gradient and stay exactly 0, and the rule lives in the program, not in the caller.
* ``predict(support_x, support_y, query_x, *adapted) -> (logits,)``: the adapted parameters
  (``adapt_loss``'s, in ``meta["adapt"]`` order; CAVIA: the context) are inputs, because the
  optimiser updates them in ``adapt_loss``'s memory only. BatchNorm is frozen at the support
  set's statistics, as the PyTorch runtime predicts: support and queries run as one batch
  whose BatchNorm layers normalise every row with the mean and biased variance of the support
  rows, so each query is predicted independently of the others. ProtoNet: prototypes are the
  class means of the support embeddings (``support_y`` gives the classes); logits are minus
  the squared distances. The query batch is dynamic, up to ``meta["max_queries"]``.
* ``metaprune_meta() -> uint8 tensor``: UTF-8 JSON (rule, input, support size, method and
  parameter names), so a device (or ``metaprune adapt --runtime executorch``) needs nothing
  but the ``.pte``.

Workarounds for the ExecuTorch kernels (executorch 1.4): max-pooling's backward gives wrong
gradients (pytorch/executorch#21686), so every 2x2 max-pool is exported as 0/1 blends of the
windows' entries (:class:`AmaxPool2`, :func:`blend_pool2`: same values, and max-pooling's
gradient, ties included, tested against eager); stride-1 convolutions as im2col + one matrix
product (:class:`MatmulConv2d`: ExecuTorch's portable convolution kernels, forward and
backward, are about 15x slower); zero padding as ``F.pad``, whose backward (a negative pad,
which ExecuTorch refuses) the pass :func:`negative_pad_as_slices` turns into slices; global
average pooling as a mean; BatchNorm (batch statistics in ``adapt_loss``, as the backbones use
it; the support's in ``predict``) as :class:`BatchStatsNorm`, whose per-channel means are two
matrix products with constant vectors (:func:`channel_mean`): ExecuTorch computes those as
accurately as eager (its batch-norm kernel's single-pass sums did not), forward and backward.

Speed: with ``delegate="xnnpack"`` (the default) every operation XNNPACK supports runs in
ExecuTorch's XNNPACK backend (matrix products, element-wise arithmetic, slices, pads,
concatenations); the rest on ExecuTorch's portable kernels, whose copies, reductions and
indexing are per-element loops. Copies whose innermost run is one element cost a call per
element in both, so nothing here slices every other entry: max-pooling picks the pairs of a
window by matrix products with 0/1 :func:`selector` matrices (exact), and ReLU is
:class:`BlendReLU` (no comparison or ``where``, which XNNPACK lacks). A sequential stack of
Conv4's layer types runs on channel-major ``(C, N, H, W)`` activations
(:class:`CnhwSequential`), where the im2col is built from whole-row slices and one ``mm`` gives
the next layer's layout, so no activation is transposed; ReLU follows the max-pool (a quarter
of the entries). Edge-graph passes: :func:`transpose_smaller_mm` makes each weight gradient
transpose the output gradient instead of the im2col matrix; :func:`zero_scatter_as_pad` turns
each slice's backward into a pad; :func:`drop_activation_aliases` drops copies of saved
activations.

The program is static in the support set's shape (``n_way x k_shot`` images of the model's
input size): export one program per shot count (``--k-shot``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..models.layers import Embedding, MaxPool2, add_film_hooks, film_parameters, film_site
from .executorch_runtime import LOSS_METHOD, META_METHOD, PREDICT_METHOD, PTE_FORMAT, PTE_VERSION
from .format import load_mpz
from .runtime import DeviceModel

DEFAULT_MAX_QUERIES = 128
DELEGATES = ("xnnpack", "portable")  # build_program's delegate choices
DEFAULT_DELEGATE = "xnnpack"
PAIR_CHUNK = 16  # the most entries blend_pool2's selector products read per output


# ---- ExecuTorch-friendly layers ---------------------------------------------------------------
def later_wins(first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
    """1.0 where ``later > first`` (strictly; a tie keeps the first; finite entries), else
    0.0, without a gradient: ``ceil(clamp(later - first, 0, 1))``, arithmetic that XNNPACK runs (its
    comparisons, ``where`` and the index ops are not delegated)."""
    return torch.ceil(torch.clamp(later.detach() - first.detach(), 0.0, 1.0))


def selector(n: int, cols: int, start: int, step: int, dtype: torch.dtype) -> torch.Tensor:
    """The 0/1 matrix ``(n, cols)`` whose product picks entries ``start + step * j`` of each
    row (column ``j``; all zero past the row's end): ``X @ S`` is exactly those entries (one
    product by 1, the others add zeros), and its gradient exactly their scatter back."""
    rows, picked = torch.arange(n)[:, None], start + step * torch.arange(cols)[None, :]
    return (rows == picked).to(dtype)


def blend_pool2(x: torch.Tensor, ceil_mode: bool = False) -> torch.Tensor:
    """``F.max_pool2d(x, 2, ceil_mode=ceil_mode)`` for finite ``x`` as 0/1 blends of the
    windows' entries: the larger of each horizontal pair, then of the two rows,
    ``m * later + (1 - m) * first`` with ``m`` = :func:`later_wins` (exact: one product is the
    entry, the other 0), so the gradient goes to each window's first maximum in row-major
    order, as max-pooling's does, through products only: no ``gather``/``scatter``
    (ExecuTorch's are per-element loops) and no max-pool backward (wrong in ExecuTorch). The
    pairs are picked by matrix products with :func:`selector` matrices over chunks of at most
    ``PAIR_CHUNK`` entries (exact, a bounded cost per entry), where slicing every other entry
    would copy one entry per call. Ceil mode's missing entries are float32's lowest value, not
    -inf (0 * -inf is NaN)."""
    h, w = x.shape[-2:]
    if h % 2 or w % 2:  # ceil mode: the odd last row / column is a window of its own
        x = (F.pad(x, (0, w % 2, 0, h % 2), value=torch.finfo(x.dtype).min) if ceil_mode
             else x[..., : h - h % 2, : w - w % 2])
    lead, h2, w2 = x.shape[:-2], x.shape[-2] // 2, x.shape[-1] // 2
    # the longest even chunk of a row that divides it: a pair never straddles two chunks
    chunk = max(c for c in range(2, min(PAIR_CHUNK, 2 * w2) + 1, 2) if (2 * w2) % c == 0)
    rows = x.reshape(-1, chunk)
    left = (rows @ selector(chunk, chunk // 2, 0, 2, x.dtype)).reshape(-1, w2)
    right = (rows @ selector(chunk, chunk // 2, 1, 2, x.dtype)).reshape(-1, w2)
    m = later_wins(left, right)
    pairs = (right * m + left * (1 - m)).reshape(-1, 2 * w2)   # a window's two rows
    if 2 * w2 <= PAIR_CHUNK:  # short rows: products again
        top = pairs @ selector(2 * w2, w2, 0, 1, x.dtype)
        bottom = pairs @ selector(2 * w2, w2, w2, 1, x.dtype)
    else:  # long rows: the two halves are runs of w2 entries
        top, bottom = pairs[:, :w2], pairs[:, w2:]
    m = later_wins(top, bottom)
    return (bottom * m + top * (1 - m)).reshape(*lead, h2, w2)


class BlendReLU(nn.ReLU):
    """``nn.ReLU`` as ``x * m``, ``m`` = :func:`later_wins` (0, x): for finite ``x`` the same
    values (an entry <= 0 gives a zero) and gradient (``m``: 0 at 0, as ReLU's), from ops
    XNNPACK runs, where ReLU's backward is a comparison and a ``where`` that split the
    delegated graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * later_wins(torch.zeros((), dtype=x.dtype), x)


class AmaxPool2(nn.Module):
    """2x2 max-pooling for ExecuTorch (:func:`blend_pool2`)."""

    commutes_with_relu = True  # a FiLM site may move ReLU past it (models.layers.film_site)

    def __init__(self, ceil_mode: bool = False):
        super().__init__()
        self.ceil_mode = ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blend_pool2(x, self.ceil_mode)


class MatmulConv2d(nn.Module):
    """A stride-1 ``nn.Conv2d`` as im2col (zero borders by concatenation, the k x k shifted
    views stacked) + one matrix product: ExecuTorch's portable convolution kernels, forward
    and backward, are loops about 15x slower than its matrix product on Conv4's layers.
    Same parameters, same names (``weight``, ``bias``)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.kh, self.kw = conv.kernel_size
        self.ph, self.pw = conv.padding

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (any two leading dims) with the zero borders of the padding (its backward, a
        negative pad that ExecuTorch's kernels refuse, becomes slices in the edge graph:
        :func:`negative_pad_as_slices`)."""
        return F.pad(x, (self.pw, self.pw, self.ph, self.ph)) if self.pw or self.ph else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = self.padded(x)
        ho, wo = x.shape[2] - self.kh + 1, x.shape[3] - self.kw + 1
        cols = torch.stack([x[:, :, i:i + ho, j:j + wo] for i in range(self.kh)
                            for j in range(self.kw)], dim=2)          # (N, C, kh*kw, Ho, Wo)
        cols = cols.reshape(n, c * self.kh * self.kw, ho * wo).transpose(1, 2)
        out = F.linear(cols, self.weight.reshape(self.weight.shape[0], -1), self.bias)
        return out.transpose(1, 2).reshape(n, -1, ho, wo)


class GlobalMean(nn.Module):
    """``nn.AdaptiveAvgPool2d(1)`` as a mean (average pooling has no backward kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


def channel_mean(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Per-channel mean (keepdim) of ``x`` (channel dimension 0 or 1), as two matrix products
    with constant vectors: over each (image, channel) map, then over the images.
    ExecuTorch's optimised ``mm`` (BLAS) replaces its per-element reduction kernels and their
    backward's expand copies (about a tenth of the adaptation's time). Its reductions add in
    one float32 pass: one mean over N*H*W entries (3920 at Omniglot's first layer) erred up to
    3e-3, where these short blocked sums err as eager's (1e-6), and an error that size flips a
    max-pooling window between two near-equal entries, which sends that window's gradient to
    another position (benchmarks/results/executorch_report.md)."""
    a, b = x.shape[:2]
    per_map = x.numel() // (a * b)
    m = x.reshape(a * b, per_map)
    if per_map > 1:
        m = m @ torch.full((per_map, 1), 1.0 / per_map, dtype=x.dtype)
    m = m.reshape(a, b)
    keep = [1] * (x.dim() - 2)
    if channel_dim == 0:
        return (m @ torch.full((b, 1), 1.0 / b, dtype=x.dtype)).reshape(a, 1, *keep)
    return (torch.full((1, a), 1.0 / a, dtype=x.dtype) @ m).reshape(1, b, *keep)


class BatchStatsNorm(nn.Module):
    """A BatchNorm without running statistics, written as the ops ExecuTorch computes as
    accurately as eager (:func:`channel_mean`): normalise with the batch's statistics (mean,
    biased variance) or, with ``n_support``, those of the first ``n_support`` images (the
    support set's, as ``runtime.freeze_batchnorm`` freezes them). ``channel_dim``: 1 for NCHW
    activations, 0 for channel-major ``(C, N, H, W)`` ones (:class:`CnhwSequential`)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, channel_dim: int = 1,
                 n_support: int | None = None):
        super().__init__()
        self.weight, self.bias = bn.weight, bn.bias   # same names as the BatchNorm's
        self.eps, self.channel_dim, self.n_support = bn.eps, channel_dim, n_support

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_dim = 1 - self.channel_dim
        s = x if self.n_support is None else x.narrow(batch_dim, 0, self.n_support)
        mean = channel_mean(s, self.channel_dim)
        centred = x - mean
        s_centred = centred if self.n_support is None else centred.narrow(
            batch_dim, 0, self.n_support)
        var = channel_mean(s_centred * s_centred, self.channel_dim)
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.reshape(shape)
        out = centred * scale
        return out + self.bias.reshape(shape) if self.bias is not None else out


class CnhwConv2d(MatmulConv2d):
    """:class:`MatmulConv2d` on channel-major ``(C, N, H, W)`` activations, so that no
    activation is ever transposed: the zero-padded maps are flattened per (channel, image)
    and the k x k shifted windows are contiguous slices of those rows (``Ho`` padded rows
    each, whose last ``kw - 1`` columns wrap into the next row and are dropped after the
    product), stacked into ``(kh * kw * C, N * Ho * Wp)`` columns for one ``mm`` with the
    ``(C_out, kh * kw * C)`` weight; the result is already ``(C_out, N, Ho, Wp)``.
    Slices of whole rows are single ``memcpy`` calls in ExecuTorch, where the per-element
    transposes (``permute_copy``) of the NCHW im2col dominated the program's time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, n = x.shape[:2]
        x = self.padded(x)
        hp, wp = x.shape[2], x.shape[3]
        ho, wo, span = hp - self.kh + 1, wp - self.kw + 1, (hp - self.kh + 1) * wp
        flat = x.reshape(c, n, hp * wp)
        if self.kw > 1:  # the last window's wrapped columns read past the map: zeros
            flat = F.pad(flat, (0, self.kw - 1))
        # rows (shift, channel): each shift's (C, N * Ho*Wp) block, concatenated (a stack at
        # dim 1 reshaped to (C*kh*kw, ...) is a view torch.export cannot prove contiguous for
        # a dynamic N); the weight's columns in the same order
        cols = torch.cat([flat[:, :, i * wp + j:i * wp + j + span].reshape(c, n * span)
                          for i in range(self.kh) for j in range(self.kw)])
        out = self.weight.permute(0, 2, 3, 1).reshape(self.weight.shape[0], -1) @ cols
        if self.bias is not None:
            out = out + self.bias[:, None]
        out = out.reshape(out.shape[0], n, ho, wp)
        return out[..., :wo] if wo < wp else out


class CnhwSequential(nn.Sequential):
    """A sequential feature extractor run on ``(C, N, H, W)`` activations: one transpose in,
    one out (same children, so the same parameter names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(0, 1)).transpose(0, 1)


def _cnhw_convertible(m: nn.Module) -> bool:
    """Whether every layer of ``m`` has a channel-major form (Conv4's layer types)."""
    if isinstance(m, nn.Sequential):
        return len(m) > 0 and all(_cnhw_convertible(c) for c in m)
    return isinstance(m, (nn.ReLU, MaxPool2, AmaxPool2, MatmulConv2d, BatchStatsNorm))


def _cnhw(m: nn.Module) -> nn.Module:
    if isinstance(m, nn.Sequential):
        layers = [_cnhw(c) for c in m]
        for i in range(len(layers) - 1):  # ReLU then max-pool as max-pool then ReLU: the
            # same values and gradients (both monotone; a window whose maximum is <= 0 gets
            # no gradient either way), ReLU on a quarter of the entries
            if isinstance(layers[i], nn.ReLU) and isinstance(layers[i + 1], AmaxPool2):
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        return nn.Sequential(*layers)
    if isinstance(m, MatmulConv2d):
        conv = CnhwConv2d.__new__(CnhwConv2d)
        conv.__dict__.update(m.__dict__)
        return conv
    if isinstance(m, BatchStatsNorm):
        m.channel_dim = 0
    return m


def _swap_modules(model: nn.Module, swap) -> nn.Module:
    """Replace (in place) every sub-module ``m`` for which ``swap(m)`` returns a module."""
    for name, child in list(model.named_children()):
        new = swap(child)
        if new is not None:
            setattr(model, name, new)
        else:
            _swap_modules(child, swap)
    return model


def exportable(model: nn.Module, channel_major: bool = True,
               blend_relu: bool = False) -> nn.Module:
    """A copy of ``model`` with the layers ExecuTorch cannot differentiate replaced by
    equivalent ones; any other max-pooling is refused. ``channel_major``: every sequential
    stack of Conv4's layer types runs on ``(C, N, H, W)`` activations
    (:class:`CnhwSequential`; not with FiLM hooks, which modulate NCHW activations).
    ``blend_relu``: every ``nn.ReLU`` as :class:`BlendReLU` (for the training method)."""
    def swap(m: nn.Module) -> nn.Module | None:
        if isinstance(m, MaxPool2):
            return AmaxPool2(m.ceil_mode)
        if blend_relu and type(m) is nn.ReLU:
            return BlendReLU()
        if isinstance(m, nn.MaxPool2d):
            k, s, p, d = (m.kernel_size, m.stride, m.padding, m.dilation)
            if k in (2, (2, 2)) and s in (2, (2, 2)) and p in (0, (0, 0)) and d in (1, (1, 1)):
                return AmaxPool2(m.ceil_mode)
            raise ValueError(f"ExecuTorch export: {m} is not supported (only 2x2 max-pooling "
                             "with stride 2)")
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            return GlobalMean()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            return BatchStatsNorm(m)
        if (isinstance(m, nn.Conv2d) and m.stride == (1, 1) and m.dilation == (1, 1)
                and m.groups == 1 and m.padding_mode == "zeros"
                and not isinstance(m.padding, str)):
            return MatmulConv2d(m)
        return None

    model = _swap_modules(copy.deepcopy(model), swap)
    if channel_major:
        def to_cnhw(m: nn.Module) -> nn.Module | None:
            if isinstance(m, nn.Sequential) and _cnhw_convertible(m):
                return CnhwSequential(*(_cnhw(c) for c in m))
            return None

        model = _swap_modules(model, to_cnhw)
    return model


def support_stats_batchnorm(model: nn.Module, n_support: int) -> nn.Module:
    """``model`` (in place) with every BatchNorm normalising with the statistics of the first
    ``n_support`` images (:class:`BatchStatsNorm`)."""
    def swap(m: nn.Module) -> nn.Module | None:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return BatchStatsNorm(m, 1, n_support)
        if isinstance(m, BatchStatsNorm):
            m.n_support = n_support
            return m
        return None

    return _swap_modules(model, swap)


# ---- the exported methods ---------------------------------------------------------------------
def _rescaled(p: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``p`` by value, ``scale * grad`` as gradient."""
    d = p.detach()
    return d + scale * (p - d)


class _Program(nn.Module):
    """The network and how the adapted tensors enter it (as parameters of the network, or as
    CAVIA's context through the FiLM generators)."""

    def __init__(self, dm: DeviceModel, net: nn.Module, names: list[str]):
        super().__init__()
        self.net, self.names, self.kind = net, names, dm.rule["kind"]
        self.film_blocks = list(dm.rule.get("film_blocks", [])) if self.kind == "context" else []
        for b in self.film_blocks:
            self.register_buffer(f"film_w{b}", dm.mpz.film[f"b{b}_weight"].clone())
            self.register_buffer(f"film_b{b}", dm.mpz.film[f"b{b}_bias"].clone())
            film_site(net.features[b])  # the block in CAVIA's order now, not while tracing

    def run(self, x: torch.Tensor, adapted: list[torch.Tensor]) -> torch.Tensor:
        if self.kind != "context":
            return functional_call(self.net, dict(zip(self.names, adapted)), (x,))
        film = {b: film_parameters(adapted[0], getattr(self, f"film_w{b}"),
                                   getattr(self, f"film_b{b}")) for b in self.film_blocks}
        handles = add_film_hooks(self.net, self.film_blocks, lambda b, _out: film[b])
        try:
            return self.net(x)
        finally:
            for h in handles:
                h.remove()


def adapting_tensors(dm: DeviceModel) -> tuple[list[str], list[torch.Tensor],
                                                list[torch.Tensor], list[torch.Tensor | None]]:
    """The stored rule as (names, initial values, learning rates, masks) of the tensors that
    adapt: the rule's parameters, or CAVIA's zero context ("context"). A learning rate is a
    0-dim tensor unless per weight (Meta-SGD: 0 where pruned); a mask (bool) is None for an
    unmasked tensor. The step size of an entry is ``lr * mask``."""
    rule = dm.rule
    if rule["kind"] == "context":
        return ["context"], [torch.zeros(rule["context_dim"])], [torch.tensor(
            float(rule["inner_lr"]))], [None]
    if rule["kind"] != "gradient":
        return [], [], [], []
    params = dict(dm.model.named_parameters())
    names, values, lrs, keeps = [], [], [], []
    for n in rule["adapt"]:
        lr, keep = dm.lr_for(n), dm.masks.get(n)
        if isinstance(lr, torch.Tensor):  # per weight: the mask folded in
            lr = lr.detach().float().clone() if keep is None else torch.where(keep, lr, 0.0)
            keep = None
        names.append(n)
        values.append(params[n].detach().clone())
        lrs.append(lr if isinstance(lr, torch.Tensor) else torch.tensor(float(lr)))
        keeps.append(keep)
    return names, values, lrs, keeps


def training_network(dm: DeviceModel) -> nn.Module:
    """``dm``'s network as ``adapt_loss`` computes it (the ExecuTorch-friendly layers; NCHW
    for CAVIA, whose FiLM hooks modulate NCHW activations)."""
    return exportable(dm.model, dm.rule["kind"] != "context", blend_relu=True)


class AdaptLoss(_Program):
    """``(support_x, support_y) -> (cross-entropy,)`` with the adapting tensors as the only
    trainable parameters (``p0``, ``p1``, ...), their gradients scaled by ``lr * mask``
    (buffers ``lr{i}``, ``keep{i}``: a mask costs 1 byte per weight in the program)."""

    def __init__(self, dm: DeviceModel):
        names, values, lrs, keeps = adapting_tensors(dm)
        net = training_network(dm)
        net.requires_grad_(False)
        super().__init__(dm, net, names)
        self.masked = [k is not None for k in keeps]
        for i, (v, lr, keep) in enumerate(zip(values, lrs, keeps)):
            setattr(self, f"p{i}", nn.Parameter(v))
            self.register_buffer(f"lr{i}", lr)
            if keep is not None:
                self.register_buffer(f"keep{i}", keep.clone())

    def step_size(self, i: int) -> torch.Tensor:
        lr = getattr(self, f"lr{i}")
        return getattr(self, f"keep{i}").to(lr.dtype) * lr if self.masked[i] else lr

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
        adapted = [_rescaled(getattr(self, f"p{i}"), self.step_size(i))
                   for i in range(len(self.names))]
        return (F.cross_entropy(self.run(x, adapted), y),)


class Predict(_Program):
    """``(support_x, support_y, query_x, *adapted) -> (query logits,)``, BatchNorm at the
    support statistics."""

    def __init__(self, dm: DeviceModel, n_support: int, n_way: int):
        net = support_stats_batchnorm(exportable(dm.model, dm.rule["kind"] != "context")
                                      .requires_grad_(False), n_support)
        names = adapting_tensors(dm)[0]
        for n in names if dm.rule["kind"] == "gradient" else []:
            # inputs of this method: the stored copy would be dead weight in the program
            parent, _, leaf = n.rpartition(".")
            setattr(net.get_submodule(parent), leaf, nn.Parameter(torch.empty(0), False))
        super().__init__(dm, net, names)
        self.n_support, self.n_way = n_support, n_way

    def forward(self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
                *adapted: torch.Tensor) -> tuple[torch.Tensor]:
        x = torch.cat([sx, qx])
        if self.kind == "prototypes":
            z = Embedding(self.net)(x)
            zs, zq = z[: self.n_support], z[self.n_support:]
            onehot = (sy[:, None] == torch.arange(self.n_way)[None]).to(zs.dtype)
            protos = (onehot.t() @ zs) / onehot.sum(0)[:, None]
            return (-(zq[:, None, :] - protos[None]).pow(2).sum(-1),)
        return (self.run(x, list(adapted))[self.n_support:],)


# ---- export -----------------------------------------------------------------------------------
def transpose_smaller_mm(gm: torch.fx.GraphModule) -> Any:
    """Edge-graph pass: ``mm(A, X^T)`` as ``(X @ A^T)^T`` and ``mm(X^T, B)`` as
    ``(B^T @ X)^T`` where the transposed ``X`` has more elements than the other operand and
    the product together. A weight gradient (``G @ cols^T``) otherwise transposes the whole
    im2col matrix, element by element (ExecuTorch's ``permute_copy``); this transposes the
    output gradient and the small product instead. Same dot products."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    mm, perm = exir_ops.edge.aten.mm.default, exir_ops.edge.aten.permute_copy.default
    graph = gm.graph

    def transposed(n: Any) -> bool:
        return (isinstance(n, torch.fx.Node) and n.target == perm
                and list(n.args[1]) == [1, 0])

    def t(n: torch.fx.Node) -> torch.fx.Node:
        if transposed(n):
            return n.args[0]
        out = graph.call_function(perm, (n, [1, 0]))
        out.meta["val"] = n.meta["val"].t().contiguous()
        return out

    changed = False
    for node in list(graph.nodes):
        if node.target != mm:
            continue
        a, b = node.args
        size = node.meta["val"].numel()
        for big, other, right in ((b, a, True), (a, b, False)):
            if transposed(big) and big.meta["val"].numel() > other.meta["val"].numel() + size:
                x = big.args[0]
                with graph.inserting_before(node):
                    ot = t(other)
                    prod = graph.call_function(mm, (x, ot) if right else (ot, x))
                    prod.meta["val"] = (x.meta["val"] @ ot.meta["val"] if right
                                        else ot.meta["val"] @ x.meta["val"])
                    out = t(prod)
                node.replace_all_uses_with(out)
                graph.erase_node(node)
                changed = True
                break
    if changed:
        graph.eliminate_dead_code()
        gm.recompile()
    return PassResult(gm, changed)


def zero_scatter_as_pad(gm: torch.fx.GraphModule) -> Any:
    """Edge-graph pass: ``slice_scatter(zeros, src, dim, start, end)`` (step 1), the backward
    of a slice, which im2col's shifted windows take by the dozen, as
    ``constant_pad_nd(src)``: the same tensor, from one op that XNNPACK runs instead of a
    fill and a copy by ExecuTorch's portable kernels."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    edge = exir_ops.edge.aten
    graph, changed = gm.graph, False
    for node in list(graph.nodes):
        if node.target != edge.slice_scatter.default:
            continue
        defaults = (0, None, None, 1)  # dim, start, end, step
        base, src, dim, start, end, step = (*node.args, *defaults[len(node.args) - 2:])
        if (node.kwargs or step != 1 or not isinstance(base, torch.fx.Node)
                or base.target != edge.full.default or base.args[1] != 0):
            continue
        shape = base.meta["val"].shape
        dim %= len(shape)
        size = shape[dim]
        start = 0 if start is None else start + size if start < 0 else min(start, size)
        end = size if end is None else end + size if end < 0 else min(end, size)
        if end - start != src.meta["val"].shape[dim]:
            continue
        with graph.inserting_before(node):
            pad = graph.call_function(edge.constant_pad_nd.default, (
                src, [0, 0] * (len(shape) - 1 - dim) + [start, size - end], 0.0))
            pad.meta["val"] = base.meta["val"].clone()
        node.replace_all_uses_with(pad)
        graph.erase_node(node)
        changed = True
    if changed:
        graph.eliminate_dead_code()
        gm.recompile()
    return PassResult(gm, changed)


def negative_pad_as_slices(gm: torch.fx.GraphModule) -> Any:
    """Edge-graph pass: a ``constant_pad_nd`` with negative amounts (the backward of a zero
    padding: its crop), which ExecuTorch's kernels refuse, as ``slice_copy`` along each
    cropped dimension, then a pad by the positive amounts if any."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    edge = exir_ops.edge.aten
    graph, changed = gm.graph, False
    for node in list(graph.nodes):
        if node.target != edge.constant_pad_nd.default or min(node.args[1]) >= 0:
            continue
        x, pads = node.args[0], list(node.args[1])
        value = node.args[2] if len(node.args) > 2 else 0.0
        ndim = len(x.meta["val"].shape)
        out = x
        with graph.inserting_before(node):
            for i in range(0, len(pads), 2):
                dim, before, after = ndim - 1 - i // 2, pads[i], pads[i + 1]
                if before >= 0 and after >= 0:
                    continue
                size = out.meta["val"].shape[dim]
                start, end = max(-before, 0), size - max(-after, 0)
                sliced = graph.call_function(edge.slice_copy.Tensor, (out, dim, start, end, 1))
                sliced.meta["val"] = out.meta["val"].narrow(dim, start, end - start).clone()
                out = sliced
            positive = [max(p, 0) for p in pads]
            if any(positive):
                padded = graph.call_function(edge.constant_pad_nd.default,
                                             (out, positive, value))
                padded.meta["val"] = node.meta["val"].clone()
                out = padded
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        changed = True
    if changed:
        gm.recompile()
    return PassResult(gm, changed)


def drop_activation_aliases(gm: torch.fx.GraphModule) -> Any:
    """Edge-graph pass: ``alias_copy`` of a computed tensor (the joint graph saves
    activations for the backward through them) replaced by the tensor itself: a copy less
    each. The aliases of the graph's inputs (the parameters, which the training method also
    returns) stay as exported. (No adapting parameter is packed by XNNPACK as a constant: each
    reaches the network through :func:`_rescaled`'s arithmetic, and matrix products take
    their weights as inputs, ``force_non_static_weights_for_f32_linear``.)"""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    graph, changed = gm.graph, False
    for node in list(graph.nodes):
        if (node.target == exir_ops.edge.aten.alias_copy.default
                and node.args[0].op != "placeholder"):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            changed = True
    if changed:
        gm.recompile()
    return PassResult(gm, changed)


@contextlib.contextmanager
def _quiet(enabled: bool = True):
    if not enabled:
        yield
        return
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "executorch")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def build_program(dm: DeviceModel, k_shot: int = 1, max_queries: int = DEFAULT_MAX_QUERIES,
                  n_way: int | None = None, source: str = "<memory>", quiet: bool = True,
                  delegate: str = DEFAULT_DELEGATE) -> tuple[bytes, dict[str, Any]]:
    """Export ``dm`` as an ExecuTorch program; returns (``.pte`` bytes, its metadata).
    ``delegate``: "xnnpack" hands every operation XNNPACK supports to ExecuTorch's XNNPACK
    backend (its matrix products and element-wise kernels; the runtime must include the
    backend, as the pip wheel's does), "portable" keeps the whole program on ExecuTorch's
    kernels (a runtime built without XNNPACK)."""
    from executorch.exir import to_edge_transform_and_lower
    from torch.export import Dim, export
    from torch.export.experimental import _export_forward_backward

    n_way = int(n_way or dm.meta.get("n_way") or 0)
    if n_way < 2:
        raise ValueError(f"'{source}' stores no class count: give n_way")
    if k_shot < 1 or max_queries < 1:
        raise ValueError("k_shot and max_queries must be >= 1")
    if delegate not in DELEGATES:
        raise ValueError(f"delegate must be one of {', '.join(DELEGATES)}, got {delegate!r}")
    if not dm.channels or not dm.size:
        raise ValueError(f"'{source}' stores no input size/channels")
    n_support = n_way * k_shot
    shape = (dm.channels, dm.size, dm.size)
    g = torch.Generator().manual_seed(0)
    sx = torch.rand(n_support, *shape, generator=g)
    sy = torch.arange(n_way).repeat_interleave(k_shot)
    qx = torch.rand(2, *shape, generator=g)
    names, adapted, _, _ = adapting_tensors(dm)
    methods = {}
    with _quiet(quiet):
        try:
            if names:
                ep = export(AdaptLoss(dm), (sx, sy), strict=False)
                methods[LOSS_METHOD] = _export_forward_backward(ep)
            # *adapted is one tuple of the signature (absent when empty)
            dyn = (None, None, {0: Dim("queries", min=1, max=max_queries)},
                   *([(None,) * len(adapted)] if adapted else []))
            methods[PREDICT_METHOD] = export(Predict(dm, n_support, n_way),
                                             (sx, sy, qx, *adapted), dynamic_shapes=dyn,
                                             strict=False)
        except Exception as e:
            raise RuntimeError(f"ExecuTorch export of '{source}' failed: {e}") from e
    meta = {"format": PTE_FORMAT, "version": PTE_VERSION, "rule": dm.rule,
            "n_way": n_way, "k_shot": k_shot, "n_support": n_support,
            "input": dm.meta["input"], "max_queries": max_queries,
            "adapt": names, "sgd_lr": 1.0, "delegate": delegate,
            "methods": {"loss": LOSS_METHOD if names else None,
                        "predict": PREDICT_METHOD},
            "model": dm.meta["model"], "source": Path(source).name}
    blob = torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)
    partitioner = None
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )

        # a weight that adapts is an input of its matrix product, never packed as a constant
        partitioner = [XnnpackPartitioner(force_non_static_weights_for_f32_linear=True)]
    with _quiet(quiet):
        prog = to_edge_transform_and_lower(
            methods, transform_passes=[transpose_smaller_mm, zero_scatter_as_pad,
                                       negative_pad_as_slices, drop_activation_aliases],
            partitioner=partitioner, constant_methods={META_METHOD: blob}).to_executorch()
    return prog.buffer, meta


def export_executorch(mpz_path: str | os.PathLike, out: str | os.PathLike, k_shot: int = 1,
                      max_queries: int = DEFAULT_MAX_QUERIES,
                      delegate: str = DEFAULT_DELEGATE) -> Path:
    """Write the ``.pte`` program of the ``.mpz`` model at ``mpz_path`` to ``out``."""
    dm = DeviceModel(load_mpz(mpz_path), str(mpz_path))
    data, _ = build_program(dm, k_shot, max_queries, source=str(mpz_path), delegate=delegate)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def compare_runtimes(mpz_path: str | os.PathLike, pte_path: str | os.PathLike,
                     seed: int = 0, queries: int = 16) -> str:
    """Adapt with the PyTorch runtime (``.mpz``) and the ExecuTorch program (``.pte``) on one
    random support set and compare: adapted tensors, query logits, predicted classes."""
    from .executorch_runtime import ExecuTorchModel

    dm, em = DeviceModel.load(mpz_path), ExecuTorchModel.load(pte_path)
    m = em.meta
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(m["n_support"], em.channels, em.size, em.size, generator=g)
    sy = torch.arange(m["n_way"]).repeat_interleave(m["k_shot"])
    qx = torch.rand(queries, em.channels, em.size, em.size, generator=g)
    ref, got = dm.adapt(sx, sy), em.adapt(sx, sy)
    diffs = [(got.params[n] - ref.params[n]).abs().max().item()
             for n in got.params if n in ref.params]
    zeros = all(bool((got.params[n][~keep] == 0).all())
                for n, keep in dm.masks.items() if n in got.params)
    lr, lg = ref.logits(qx), got.logits(qx)
    same = int((lr.argmax(1) == lg.argmax(1)).sum())
    weights = (f"max |adapted weight difference| {max(diffs):.1e}, pruned weights exactly 0: "
               f"{'yes' if zeros else 'NO'}; " if diffs else "")
    return (f"check, ExecuTorch vs PyTorch runtime on a random {m['n_way']}-way "
            f"{m['k_shot']}-shot support set ({dm.rule['steps']} step(s)): {weights}max "
            f"|logit difference| {(lr - lg).abs().max().item():.1e}, same predicted classes "
            f"for {same} of {queries} random queries")
