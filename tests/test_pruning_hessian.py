"""Layer input Hessians, damped inverses and the OBS update against explicit computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metaprune.pruning import (
    HessianAccumulator,
    damped_inverse,
    layer_input_rows,
    obs_compensation,
    obs_saliency,
    record_hessians,
    weight_matrix,
)


def explicit_conv_hessian(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Sum of x x^T over every output position, patches cut by hand from the padded input."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    out_h = (x.shape[2] + 2 * ph - kh) // sh + 1
    out_w = (x.shape[3] + 2 * pw - kw) // sw + 1
    d = x.shape[1] * kh * kw + 1
    H = torch.zeros(d, d, dtype=torch.float64)
    n = 0
    for b in range(x.shape[0]):
        for i in range(out_h):
            for j in range(out_w):
                patch = xp[b, :, i * sh: i * sh + kh, j * sw: j * sw + kw].reshape(-1)
                v = torch.cat([patch, torch.ones(1, dtype=x.dtype)])
                H += torch.outer(v, v)
                n += 1
    return H / n


def test_conv_hessian_equals_explicit_sum_with_padding_stride_bias() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    acc = HessianAccumulator(conv)
    xs = [torch.randn(2, 2, 5, 6, dtype=torch.float64) for _ in range(2)]
    for x in xs:
        acc.add(x)
    H = acc.hessian()
    ref = explicit_conv_hessian(conv, torch.cat(xs))
    assert H.shape == (19, 19)
    assert torch.allclose(H, ref, atol=1e-12)
    assert acc.count == 4 * 3 * 3  # 4 images, 3x3 output positions each
    # the columns are in weight_matrix order: rows @ W^T reproduces the convolution
    rows = layer_input_rows(conv, xs[0])
    y = (rows @ weight_matrix(conv).T).reshape(2, 3, 3, 3).permute(0, 3, 1, 2)
    assert torch.allclose(y, conv(xs[0]), atol=1e-12)


def test_patch_stride_subsamples_patches_and_no_bias_row_without_bias() -> None:
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    x = torch.randn(2, 1, 4, 4)
    full = layer_input_rows(conv, x)
    sub = layer_input_rows(conv, x, patch_stride=5)
    assert full.shape == (32, 9)          # no bias column
    assert torch.equal(sub, full[::5])
    with pytest.raises(ValueError):
        layer_input_rows(conv, x, patch_stride=0)
    lin = nn.Linear(3, 2)  # samples of a Linear layer are never sub-sampled
    assert layer_input_rows(lin, torch.randn(10, 3), patch_stride=5).shape == (10, 4)


def test_linear_hessian_equals_explicit_sum() -> None:
    lin = nn.Linear(4, 2).double()
    x = torch.randn(3, 5, 4, dtype=torch.float64)  # extra leading dims are flattened
    acc = HessianAccumulator(lin)
    acc.add(x)
    v = torch.cat([x.reshape(-1, 4), torch.ones(15, 1, dtype=torch.float64)], 1)
    ref = sum(torch.outer(r, r) for r in v) / 15
    assert torch.allclose(acc.hessian(), ref, atol=1e-12)


def test_hooks_record_inputs_under_functional_call_with_other_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    params = {n: p.detach() + 0.5 for n, p in model.named_parameters()}  # "adapted" weights
    with record_hessians(model, ["0", "2"]) as (accs, switch):
        model(x)                      # switch off: not recorded
        switch["on"] = True
        functional_call(model, params, (x,))
    h = torch.tanh(x @ params["0.weight"].T + params["0.bias"])
    v = torch.cat([h, torch.ones(6, 1, dtype=torch.float64)], 1)
    assert accs["2"].count == 6
    assert torch.allclose(accs["2"].hessian(), v.T @ v / 6, atol=1e-12)
    assert not model[0]._forward_pre_hooks  # hooks removed


def test_damped_inverse_is_inverse_with_relative_damping_and_survives_singular_h() -> None:
    a = torch.randn(50, 6, dtype=torch.float64)
    H = a.T @ a / 50
    lam = 1e-3 * torch.diagonal(H).mean()
    ref = torch.linalg.inv(H + lam * torch.eye(6, dtype=torch.float64))
    assert torch.allclose(damped_inverse(H, 1e-3), ref, rtol=1e-9, atol=1e-12)
    singular = torch.outer(a[0], a[0])  # rank 1: no Cholesky without damping
    inv = damped_inverse(singular, 0.0)
    assert torch.isfinite(inv).all()


def _ls_optimum(X: torch.Tensor, w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """argmin_v ||X v - X w||^2 over v with v[~keep] = 0 (least squares)."""
    sol = torch.linalg.lstsq(X[:, keep], X @ w).solution
    v = torch.zeros_like(w)
    v[keep] = sol
    return v


def test_obs_single_weight_removal_is_least_squares_optimum_and_saliency_is_error() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(5, 3).double()
    X = torch.cat([torch.randn(40, 5, dtype=torch.float64) + 0.3,
                   torch.ones(40, 1, dtype=torch.float64)], 1)  # bias-augmented inputs
    acc = HessianAccumulator(lin)
    acc.add(X[:, :5])
    H = acc.hessian()
    assert torch.allclose(H, X.T @ X / 40)
    hinv = damped_inverse(H, 0.0)
    W = weight_matrix(lin).detach()
    sal = obs_saliency(W, hinv)
    for j, q in [(0, 2), (2, 4), (1, 0)]:
        pruned = torch.zeros_like(W, dtype=torch.bool)
        pruned[j, q] = True
        for mode in ("joint", "single"):
            new = W + obs_compensation(W, hinv, pruned, mode)
            keep = torch.ones(6, dtype=torch.bool)
            keep[q] = False
            opt = _ls_optimum(X, W[j], keep)
            assert abs(float(new[j, q])) < 1e-10
            assert torch.allclose(new[j], opt, atol=1e-8), mode
            assert torch.equal(new[[u for u in range(3) if u != j]],
                               W[[u for u in range(3) if u != j]])
            err = ((X @ (new[j] - W[j])) ** 2).mean()
            assert float(sal[j, q]) == pytest.approx(float(err), rel=1e-8)


def test_joint_obs_removal_of_several_weights_is_least_squares_optimum() -> None:
    torch.manual_seed(2)
    X = torch.cat([torch.randn(60, 6, dtype=torch.float64),
                   torch.ones(60, 1, dtype=torch.float64)], 1)
    W = torch.randn(2, 7, dtype=torch.float64)
    hinv = damped_inverse(X.T @ X / 60, 0.0)
    pruned = torch.zeros(2, 7, dtype=torch.bool)
    pruned[0, [1, 3, 4]] = True
    pruned[1, [0]] = True
    new = W + obs_compensation(W, hinv, pruned, "joint")
    for j in range(2):
        opt = _ls_optimum(X, W[j], ~pruned[j])
        assert torch.allclose(new[j], opt, atol=1e-8)
    # the per-weight ("single") formula is only an approximation for several weights
    approx = W + obs_compensation(W, hinv, pruned, "single")
    assert not torch.allclose(approx[0], new[0], atol=1e-6)


@pytest.mark.parametrize("stride", [2, 5, 7])
def test_sub_sampled_patches_equal_every_nth_row_of_unfold(stride: int) -> None:
    import torch.nn.functional as F

    convs = [(nn.Conv2d(3, 8, 3, padding=1), (4, 3, 11, 9)),
             (nn.Conv2d(5, 7, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                        bias=False), (3, 5, 10, 12))]
    for conv, shape in convs:
        x = torch.randn(shape)
        cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                        stride=conv.stride)
        ref = cols.transpose(1, 2).reshape(-1, cols.shape[1])[::stride]
        if conv.bias is not None:
            ref = torch.cat([ref, ref.new_ones(ref.shape[0], 1)], 1)
        assert torch.equal(layer_input_rows(conv, x, stride), ref)
