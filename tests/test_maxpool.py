"""MaxPool2: the same values and gradients as nn.MaxPool2d on every path."""

import pytest
import torch
import torch.nn.functional as F

from metaprune.models.layers import FAST_POOL_MIN_NUMEL, MaxPool2, max_pool2_values

SHAPES = [(3, 4, 8, 8), (3, 4, 7, 7), (2, 3, 5, 6), (2, 2, 3, 2), (2, 2, 1, 1),
          (40, 32, 14, 14), (5, 8, 21, 21)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_values_equal_max_pool2d_with_ties_and_nan(shape, ceil_mode):
    if min(shape[-2:]) < 2 and not ceil_mode:
        pytest.skip("no 2x2 window fits")
    torch.manual_seed(0)
    x = torch.randn(*shape).round().relu()  # many ties, zeros included
    x.view(-1)[:: 97] = float("nan")
    ref = F.max_pool2d(x, 2, ceil_mode=ceil_mode)
    assert torch.allclose(max_pool2_values(x, ceil_mode), ref, equal_nan=True, atol=0, rtol=0)
    with torch.no_grad():
        assert torch.allclose(MaxPool2(ceil_mode)(x), ref, equal_nan=True, atol=0, rtol=0)


def test_fast_path_runs_only_without_autograd(monkeypatch):
    calls = []
    import metaprune.models.layers as layers
    real = layers.max_pool2_values
    monkeypatch.setattr(layers, "max_pool2_values", lambda *a: calls.append(1) or real(*a))
    big = torch.randn(1, 1, 2, FAST_POOL_MIN_NUMEL)
    pool = MaxPool2()
    with torch.no_grad():
        pool(big)
        pool(torch.randn(1, 1, 2, FAST_POOL_MIN_NUMEL // 2 - 2))  # below the threshold
    assert len(calls) == 1
    x = big.clone().requires_grad_()
    g = torch.randn(1, 1, 1, FAST_POOL_MIN_NUMEL // 2)
    grad = torch.autograd.grad(pool(x), x, g)[0]
    assert len(calls) == 1  # autograd: nn.MaxPool2d's kernel, its gradient exactly
    xr = big.clone().requires_grad_()
    assert torch.equal(grad, torch.autograd.grad(F.max_pool2d(xr, 2), xr, g)[0])


def test_conv4_logits_unchanged_by_the_fast_path():
    from metaprune.models import build_model

    torch.manual_seed(0)
    model = build_model("conv4", n_way=5, width=8)
    x = torch.randn(75, 1, 28, 28)
    with torch.no_grad():
        fast = model(x)
        for m in model.modules():
            if isinstance(m, MaxPool2):
                m.forward = lambda t, m=m: F.max_pool2d(t, 2, ceil_mode=m.ceil_mode)
        assert torch.equal(fast, model(x))
