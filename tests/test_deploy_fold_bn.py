"""The device runtime's prediction module folds each frozen BatchNorm into the convolution
before it: no BatchNorm left, the same logits as the unfolded module, pruned weights still
exactly 0, layers such as MaxPool2 kept whole; a model torch.fx cannot trace, or one with
forward hooks, keeps its BatchNorms and its outputs, with a warning."""

from __future__ import annotations

import pytest
import torch
from helpers import random_pruned_learner
from torch import nn

from metaprune.deploy.format import mpz_from_learner, save_mpz
from metaprune.deploy.runtime import DeviceModel, fold_batchnorm
from metaprune.models.layers import MaxPool2

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
    # layers without children stay one call each (MaxPool2's CPU fast path stays in use)
    assert sum(isinstance(m, MaxPool2) for m in folded.modules()) == sum(
        isinstance(m, MaxPool2) for m in plain.modules()) > 0
    with torch.no_grad():
        ref, got = plain(qx), folded(qx)
    assert (got - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    assert torch.equal(adapted.logits(qx), got)  # prediction runs the folded module
    # folding scales each filter: a pruned weight stays exactly 0
    weights = {n: p for n, p in folded.named_parameters() if p.dim() == 4}
    checked = 0
    for n, keep in learner.masks.items():
        match = [w for k, w in weights.items() if k.endswith(n)]
        if match:
            (w,) = match
            assert int((w[keep == 0] != 0).sum()) == 0, n
            assert int((w[keep != 0] != 0).sum()) > 0, n
            checked += 1
    assert checked == n_conv  # every conv's weight found and checked
    assert adapted.inference_module() is folded  # built once


class Branchy(nn.Module):
    """conv -> BatchNorm, then code torch.fx cannot trace: a data-dependent branch (TraceError)
    or ``len`` of a traced value (RuntimeError)."""

    def __init__(self, how: str):
        super().__init__()
        self.conv, self.bn, self.how = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.how == "branch":
            return y if bool(y.sum() > 0) else -y
        if self.how == "len":
            return y * len(y)
        return y


@pytest.mark.parametrize("how", ["branch", "len", "hook"])
def test_unfoldable_module_is_returned_unfolded_with_a_warning(how: str) -> None:
    torch.manual_seed(0)
    net = Branchy(how)
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    if how == "hook":  # tracing would drop the hook: not folded
        net.conv.register_forward_hook(lambda _m, _i, out: out * 2)
    net.eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        before = net(x)
    with pytest.warns(UserWarning, match="BatchNorm left unfolded in Branchy"):
        out = fold_batchnorm(net)
    assert out is net and batchnorms(out) == 1
    with torch.no_grad():
        assert torch.equal(out(x), before)
    # the same module without the obstacle folds
    clean = Branchy("none").eval()
    assert batchnorms(fold_batchnorm(clean)) == 0
