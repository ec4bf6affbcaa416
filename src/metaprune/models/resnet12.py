"""ResNet-12 (four residual stages of three 3x3 convs; 64-128-256-512 at full width)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import MaxPool2
from .registry import register_model


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, track_running_stats=False)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = _bn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = _bn(c_out)
        self.conv3 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn3 = _bn(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), _bn(c_out))
        self.act = nn.LeakyReLU(0.1)
        self.pool = MaxPool2(ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.pool(self.act(out + self.shortcut(x)))


class ResNet12(nn.Module):
    def __init__(self, n_way: int = 5, in_channels: int = 3,
                 widths: tuple[int, ...] | list[int] = (64, 128, 256, 512), image_size: int = 84):
        super().__init__()
        self.config = dict(n_way=n_way, in_channels=in_channels, widths=list(widths),
                           image_size=image_size)
        chans = [in_channels, *widths]
        self.features = nn.Sequential(*[ResBlock(chans[i], chans[i + 1])
                                        for i in range(len(widths))])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[-1]
        self.head = nn.Linear(self.feature_dim, n_way)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@register_model("resnet12")
def resnet12(**kw) -> ResNet12:
    return ResNet12(**kw)
