"""The device runtime's prediction module folds each frozen BatchNorm into the convolution
before it: no BatchNorm left, the same logits as the unfolded module, pruned weights still
exactly 0; a model torch.fx cannot trace keeps its BatchNorms and its outputs."""

from __future__ import annotations

import pytest
import torch
from helpers import random_pruned_learner
from torch import nn

from metaprune.deploy.format import mpz_from_learner, save_mpz
from metaprune.deploy.runtime import DeviceModel, fold_batchnorm

CASES = [("maml", "conv4", {}, (1, 28, 28)), ("protonet", "conv4", {}, (1, 28, 28)),
         ("fomaml", "resnet12", {"widths": [8, 8, 16, 16], "in_channels": 3,
                                 "image_size": 16}, (3, 16, 16))]


def batchnorms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.mark.parametrize("name,arch,kw,shape", CASES)
def test_folded_module_equals_unfolded_and_keeps_zeros(tmp_path, name, arch, kw, shape) -> None:
    learner = random_pruned_learner(name, 0.85, model=arch, **kw)
    dm = DeviceModel.load(save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner)))
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.rand(10, *shape, generator=g), torch.rand(7, *shape, generator=g)
    adapted = dm.adapt(sx, torch.arange(5).repeat(2))
    plain, folded = adapted.inference_module(fold_bn=False), adapted.inference_module()
    n_conv = sum(isinstance(m, nn.Conv2d) for m in plain.modules())
    assert batchnorms(plain) == n_conv > 0  # every conv of both backbones feeds a BatchNorm
    assert batchnorms(folded) == 0
    with torch.no_grad():
        ref, got = plain(qx), folded(qx)
    assert (got - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    assert torch.equal(adapted.logits(qx), got)  # prediction runs the folded module
    # folding scales each filter: a pruned weight stays exactly 0
    weights = {n: p for n, p in folded.named_parameters() if p.dim() == 4}
    for n, keep in learner.masks.items():
        match = [w for k, w in weights.items() if k.endswith(n)]
        if match:
            (w,) = match
            assert int((w[keep == 0] != 0).sum()) == 0, n
            assert int((w[keep != 0] != 0).sum()) > 0, n
    assert adapted.inference_module() is folded  # built once


class Branchy(nn.Module):
    """conv -> BatchNorm with a data-dependent branch: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if bool(y.sum() > 0) else -y


def test_untraceable_module_is_copied_unfolded() -> None:
    torch.manual_seed(0)
    net = Branchy()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    net.eval()
    out = fold_batchnorm(net)
    x = torch.rand(2, 1, 8, 8)
    assert out is not net and batchnorms(out) == 1
    with torch.no_grad():
        assert torch.equal(out(x), net(x))
