"""Conv4: the standard 4-block few-shot backbone (conv3x3 - BatchNorm - ReLU - max-pool 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import MaxPool2
from .registry import register_model


def conv_block(c_in: int, c_out: int, pool: bool = True) -> nn.Sequential:
    # track_running_stats=False: BatchNorm always uses the current batch's statistics
    # (per-task statistics, as in MAML), so no state leaks between tasks.
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1),
                               nn.BatchNorm2d(c_out, track_running_stats=False), nn.ReLU()]
    if pool:
        layers.append(MaxPool2())
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """``depth`` blocks of ``width`` channels, or one width per block with ``widths``
    (registered as ``conv4-slim``, what structured pruning wrote before it described slim
    models by their shrunk shapes; such checkpoints still load). Parameter names are the same
    either way (``features.i.0.weight``, ``head.weight``, ...)."""

    def __init__(self, n_way: int = 5, in_channels: int = 1, width: int = 64,
                 image_size: int = 28, depth: int = 4, widths: Sequence[int] | None = None):
        super().__init__()
        if widths is None:
            self.config = dict(n_way=n_way, in_channels=in_channels, width=width,
                               image_size=image_size, depth=depth)
            widths = [width] * depth
        else:
            widths = [int(w) for w in widths]
            self.config = dict(n_way=n_way, in_channels=in_channels, widths=widths,
                               image_size=image_size, depth=len(widths))
        if not widths or min(widths) < 1:
            raise ValueError(f"conv4: widths must be positive integers, got {widths}")
        blocks, side, c_in = [], image_size, in_channels
        for w in widths:
            pool = side >= 2  # small inputs: stop pooling once the map is 1x1
            blocks.append(conv_block(c_in, w, pool))
            side, c_in = (side // 2 if pool else side), w
        self.features = nn.Sequential(*blocks)
        self.feature_dim = widths[-1] * side**2
        self.head = nn.Linear(self.feature_dim, n_way)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@register_model("conv4")
def conv4(**kw) -> Conv4:
    return Conv4(**kw)


@register_model("conv4-slim")
def conv4_slim(widths: Sequence[int], **kw) -> Conv4:
    return Conv4(widths=widths, **kw)
