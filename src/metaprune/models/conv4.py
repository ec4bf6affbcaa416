"""Conv4: the standard 4-block few-shot backbone (conv3x3 - BatchNorm - ReLU - max-pool 2)."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def conv_block(c_in: int, c_out: int, pool: bool = True) -> nn.Sequential:
    # track_running_stats=False: BatchNorm always uses the current batch's statistics
    # (per-task statistics, as in MAML), so no state leaks between tasks.
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1),
                               nn.BatchNorm2d(c_out, track_running_stats=False), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    def __init__(self, n_way: int = 5, in_channels: int = 1, width: int = 64,
                 image_size: int = 28, depth: int = 4):
        super().__init__()
        self.config = dict(n_way=n_way, in_channels=in_channels, width=width,
                           image_size=image_size, depth=depth)
        blocks, side = [], image_size
        for i in range(depth):
            pool = side >= 2  # small inputs: stop pooling once the map is 1x1
            blocks.append(conv_block(in_channels if i == 0 else width, width, pool))
            side = side // 2 if pool else side
        self.features = nn.Sequential(*blocks)
        self.feature_dim = width * side**2
        self.head = nn.Linear(self.feature_dim, n_way)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@register_model("conv4")
def conv4(**kw) -> Conv4:
    return Conv4(**kw)
