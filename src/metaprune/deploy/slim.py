"""``conv4-slim``: Conv4 with one width per block, what structured pruning produces.

Parameter names are those of ``conv4`` (``features.i.0.weight``, ``head.weight``, ...), so
learners, checkpoints, the ``.mpz`` format, the runtime and the ONNX export work unchanged.
Registered on import; ``metaprune.deploy.format`` and ``metaprune.deploy.runtime`` import it so
that a device can rebuild a slim model (torch only, no training code).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.conv4 import conv_block
from ..models.registry import register_model


class Conv4Slim(nn.Module):
    def __init__(self, widths: Sequence[int], n_way: int = 5, in_channels: int = 1,
                 image_size: int = 28):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"conv4-slim: widths must be positive integers, got {widths}")
        self.config = dict(n_way=n_way, in_channels=in_channels, widths=widths,
                           image_size=image_size, depth=len(widths))
        chans = [in_channels, *widths]
        self.features = nn.Sequential(*[conv_block(chans[i], chans[i + 1])
                                        for i in range(len(widths))])
        side = image_size
        for _ in widths:
            side //= 2
        self.feature_dim = widths[-1] * max(side, 1) ** 2
        self.head = nn.Linear(self.feature_dim, n_way)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@register_model("conv4-slim")
def conv4_slim(**kw) -> Conv4Slim:
    return Conv4Slim(**kw)
