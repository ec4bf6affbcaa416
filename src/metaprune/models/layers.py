"""Small building blocks shared by the backbones."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

# Inputs (elements) from which the strided-maxima path beats nn.MaxPool2d without autograd on
# CPU; measured by benchmarks/maxpool.py (benchmarks/results/maxpool.md), torch 2.13, 1 thread.
FAST_POOL_MIN_NUMEL = 20_000


def max_pool2_values(x: torch.Tensor, ceil_mode: bool = False) -> torch.Tensor:
    """The values of ``F.max_pool2d(x, 2, ceil_mode=ceil_mode)`` as two element-wise maxima
    of strided views (NaN propagates as in max-pooling)."""
    if ceil_mode:  # an odd last row / column is a window of its own
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), value=float("-inf"))
    cols = torch.maximum(x[..., :-1:2], x[..., 1::2])
    return torch.maximum(cols[..., :-1:2, :], cols[..., 1::2, :])


class MaxPool2(nn.Module):
    """``nn.MaxPool2d(2, ceil_mode=ceil_mode)``, with a faster path for large CPU inputs that
    need no gradient (the query pass of an evaluation): same values, so the path never changes
    a result. With torch 2.13 on one CPU thread, nn.MaxPool2d's forward took 10-12x longer
    than :func:`max_pool2_values` on Conv4's first-layer query batch; under autograd,
    torch.maximum's backward makes the maxima 2.5-5x slower, so training keeps nn.MaxPool2d
    (benchmarks/results/maxpool.md)."""

    commutes_with_relu = True  # a FiLM site may move ReLU past it (models.layers.film_site)

    def __init__(self, ceil_mode: bool = False):
        super().__init__()
        self.ceil_mode = ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (isinstance(x, torch.Tensor) and x.device.type == "cpu"
                and not (torch.compiler.is_compiling() or torch.compiler.is_exporting())
                and not (torch.is_grad_enabled() and x.requires_grad)
                and x.numel() >= FAST_POOL_MIN_NUMEL):
            return max_pool2_values(x, self.ceil_mode)
        return F.max_pool2d(x, 2, ceil_mode=self.ceil_mode)

    def extra_repr(self) -> str:
        return f"kernel_size=2, stride=2, ceil_mode={self.ceil_mode}"


class Embedding(nn.Module):
    """A backbone without its classifier head: ``model.embed`` (or ``model.forward`` if it has
    none) as this module's forward, so that ``functional_call`` can run the embedding with a
    parameter dict (keys prefixed ``m.``). Used by ProtoNet and the device runtime."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.embed(x) if hasattr(self.m, "embed") else self.m(x)


def film_parameters(context: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(gamma, beta) of a FiLM generator ``[gamma, beta] = weight @ context + bias``."""
    gamma, beta = F.linear(context, weight, bias).chunk(2)
    return gamma, beta


def film(out: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Feature-wise linear modulation of channels, as CAVIA writes it: ``gamma * out + beta``."""
    shape = (1, -1) + (1,) * (out.dim() - 2)
    return gamma.view(shape) * out + beta.view(shape)


# Where FiLM modulates a block, recorded in CAVIA's config and the .mpz rule: CAVIA's own order,
# conv - BatchNorm - max-pool - FiLM - ReLU (no pool in a block that has none).
FILM_SITE = "pool_film_relu"


def film_site(block: nn.Module) -> nn.Module:
    """The module of a backbone block whose output FiLM modulates (:data:`FILM_SITE`): the one
    just before the block's ReLU, once the ReLU is the block's last layer. A block ordered
    conv - BatchNorm - ReLU - pool (conv4) gets its ReLU moved after the pooling first, in
    place: the same function (ReLU and max-pooling commute), the same parameter names."""
    children = list(block.children())
    if any(isinstance(c, FixedFiLM) for c in children):
        raise ValueError("FiLM: this block carries a fixed FiLM already (insert_film)")
    relus = [i for i, c in enumerate(children) if isinstance(c, nn.ReLU)]
    if not isinstance(block, nn.Sequential) or len(relus) != 1 or relus[0] == 0:
        raise ValueError(f"FiLM needs a block (nn.Sequential) with one ReLU after its first "
                         f"layer; {type(block).__name__} is not one")
    i = relus[0]
    after = children[i + 1:]
    if not all(getattr(m, "commutes_with_relu", False) or isinstance(m, nn.MaxPool2d)
               for m in after):
        raise ValueError(f"FiLM: only max-pooling may follow the ReLU of a FiLM block, got "
                         f"{[type(m).__name__ for m in after]}")
    if after:
        _reorder(block, children[:i] + after + [children[i]])
        return after[-1]
    return children[i - 1]


def _reorder(block: nn.Sequential, layers: list[nn.Module]) -> None:
    """Make ``layers`` the children of ``block``, in that order (keys "0", "1", ...)."""
    for key in list(block._modules):
        del block._modules[key]
    for j, layer in enumerate(layers):
        block.add_module(str(j), layer)


class FixedFiLM(nn.Module):
    """A fixed FiLM ``(gamma, beta)`` as a layer (an adapted CAVIA model's inference form)."""

    def __init__(self, gamma: torch.Tensor, beta: torch.Tensor):
        super().__init__()
        self.register_buffer("gamma", gamma.detach().clone())
        self.register_buffer("beta", beta.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return film(x, self.gamma, self.beta)


def insert_film(model: nn.Module, film_of_block: dict[int, tuple[torch.Tensor, torch.Tensor]]
                ) -> None:
    """Insert (in place) a :class:`FixedFiLM` after the FiLM site of each listed block of
    ``model.features``: a graph without hooks, which tracing and export keep."""
    for b, (gamma, beta) in film_of_block.items():
        block = model.features[b]
        site = film_site(block)
        layers = list(block.children())
        at = next(i for i, m in enumerate(layers) if m is site) + 1
        _reorder(block, layers[:at] + [FixedFiLM(gamma, beta)] + layers[at:])


def add_film_hooks(model: nn.Module, blocks: list[int],
                   gamma_beta: Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                   ) -> list[RemovableHandle]:
    """FiLM block ``b`` of ``model.features`` (at :func:`film_site`) with
    ``gamma_beta(b, output)`` for each ``b`` in ``blocks``; returns the hook handles
    (``.remove()`` undoes it). CAVIA's learner and the device runtimes share this."""
    handles: list[RemovableHandle] = []
    try:
        for b in blocks:
            def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor,
                     b: int = b) -> torch.Tensor:
                return film(out, *gamma_beta(b, out))

            handles.append(film_site(model.features[b]).register_forward_hook(hook))
    except ValueError:  # a block that cannot take FiLM: none of the hooks stays
        for h in handles:
            h.remove()
        raise
    return handles


def block_channels(block: nn.Module) -> int:
    """Output channels of a backbone block: those of its last Conv2d."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"block {type(block).__name__} has no Conv2d")
    return convs[-1].out_channels
