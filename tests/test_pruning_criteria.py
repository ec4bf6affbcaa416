"""Pruning criteria: anp really uses adapted weights, taylor-meta is second order, baselines."""

from __future__ import annotations

import pytest
import torch
from helpers import central_difference
from torch import nn

from metaprune.data.tasks import Task
from metaprune.learners import build_learner
from metaprune.masks import prunable_weights
from metaprune.models import build_model
from metaprune.pruning import (
    ANP,
    LOBS,
    allocate,
    batchnorm_after,
    get_criterion,
    obs_compensation,
    weight_matrix,
)


def conv_learner(steps: int = 1, name: str = "maml", seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=12)
    return build_learner(name, model, inner_lr=0.5, inner_steps=steps)


def image_tasks(count: int = 3, n_way: int = 3, seed: int = 0) -> list[Task]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        out.append(Task(torch.rand(2 * n_way, 1, 12, 12, generator=g),
                        torch.arange(n_way).repeat(2),
                        torch.rand(3 * n_way, 1, 12, 12, generator=g),
                        torch.arange(n_way).repeat(3)))
    return out


@pytest.mark.parametrize("h_data", ["support", "query", "both"])
def test_anp_hessian_uses_adapted_weights_and_equals_lobs_without_inner_steps(h_data) -> None:
    tasks = image_tasks()
    learner = conv_learner(steps=1)
    names = prunable_weights(learner.model)
    h_anp = ANP(h_data=h_data).hessians(learner, tasks, names)
    h_lobs = LOBS(h_data=h_data).hessians(learner, tasks, names)
    assert set(h_anp) == set(names)
    # the first layer sees the images: adaptation cannot change its inputs
    assert torch.equal(h_anp[names[0]], h_lobs[names[0]])
    for n in names[1:]:  # deeper layers see features computed with the adapted weights
        rel = (h_anp[n] - h_lobs[n]).norm() / h_lobs[n].norm()
        assert rel > 1e-4, n
    # zero inner steps: the adapted network IS the meta-initialisation
    learner0 = conv_learner(steps=0)
    a0 = ANP(h_data=h_data).hessians(learner0, tasks, names)
    l0 = LOBS(h_data=h_data).hessians(learner0, tasks, names)
    for n in names:
        assert torch.equal(a0[n], l0[n])
        assert torch.equal(l0[n], h_lobs[n])  # lobs does not depend on the inner loop
    s_a = ANP(h_data=h_data).score(learner0, tasks, names)
    s_l = LOBS(h_data=h_data).score(learner0, tasks, names)
    for n in names:
        assert torch.equal(s_a.scores[n], s_l.scores[n])


def test_anp_adapted_obs_weights_score_and_compensate_from_adapted_weights() -> None:
    """obs_weights='adapted': saliency E_tasks[w'^2] / [H^-1]_qq and compensation from the mean
    adapted weights, computed here by hand; with no inner step it is the default ANP."""
    tasks = image_tasks()
    learner = conv_learner(steps=2)
    names = prunable_weights(learner.model)
    mods = dict(learner.model.named_modules())
    crit = ANP(h_data="both", compensation="joint", obs_weights="adapted")
    sc = crit.score(learner, tasks, names)
    adapted = [learner.adapt(t.support_x, t.support_y).params for t in tasks]
    for n in names:
        ly = n[: -len(".weight")]
        ws = [weight_matrix(mods[ly], a[n], a.get(f"{ly}.bias")).detach().double()
              for a in adapted]
        mean_w, mean_w2 = sum(ws) / len(ws), sum(w ** 2 for w in ws) / len(ws)
        hinv = sc.hinv[n]
        k = mods[ly].weight[0].numel()
        expect = (mean_w2 / torch.diagonal(hinv))[:, :k].reshape(mods[ly].weight.shape)
        assert torch.allclose(sc.scores[n], expect, rtol=1e-6, atol=0), n
        assert torch.allclose(sc.start[n].double(), mean_w, rtol=1e-5, atol=1e-7), n
        # the adapted weights differ from the meta-initialisation: the scores do too
        assert not torch.allclose(sc.scores[n], ANP(h_data="both").score(
            learner, tasks, [n]).scores[n], rtol=1e-3), n
    masks = allocate(sc.scores, 0.5)
    before = {n: weight_matrix(mods[n[:-7]]).detach().clone() for n in names}
    crit.compensate(learner, sc, masks)
    for n in names:
        mod = mods[n[:-7]]
        k = mod.weight[0].numel()
        pruned = torch.zeros(mod.weight.shape[0], before[n].shape[1], dtype=torch.bool)
        pruned[:, :k] = masks[n].reshape(mod.weight.shape[0], -1) == 0
        delta = obs_compensation(sc.start[n], sc.hinv[n], pruned, "joint")
        assert torch.allclose(weight_matrix(mod).detach(), before[n] + delta, atol=1e-6), n
    # zero inner steps: adapted weights are the meta-initialisation, scores as the default
    learner0 = conv_learner(steps=0)
    a = ANP(obs_weights="adapted").score(learner0, tasks, names)
    b = ANP().score(learner0, tasks, names)
    for n in names:
        assert torch.allclose(a.scores[n], b.scores[n], rtol=1e-12), n
    with pytest.raises(ValueError, match="obs_weights"):
        LOBS(obs_weights="adapted")
    with pytest.raises(ValueError, match="obs_weights"):
        ANP(obs_weights="fast")


def test_bn_aware_saliency_is_invariant_to_a_channel_scale_that_batchnorm_removes() -> None:
    """Scaling one conv output channel by c leaves the network's function unchanged (its
    BatchNorm uses batch statistics); bn_aware saliencies do not move, plain ones scale by c^2."""
    tasks = image_tasks()
    learner = conv_learner(steps=1)
    names = prunable_weights(learner.model)
    assert set(batchnorm_after(learner.model)) == {n[: -len(".weight")] for n in names[:-1]}
    resnet = build_model("resnet12", n_way=3, in_channels=1, widths=[4, 4, 4, 4])
    convs = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(batchnorm_after(resnet)) == sorted(convs)   # every conv, shortcuts included
    layer, chan, c = "features.1.0", 2, 7.0
    plain0 = LOBS().score(learner, tasks, names).scores
    aware0 = LOBS(bn_aware=True).score(learner, tasks, names).scores
    x = tasks[0].query_x
    with torch.no_grad():
        out0 = learner.model(x)
        conv = dict(learner.model.named_modules())[layer]
        conv.weight[chan] *= c
        conv.bias[chan] *= c
        assert torch.allclose(learner.model(x), out0, atol=1e-4)  # same function
    plain1 = LOBS().score(learner, tasks, names).scores
    aware1 = LOBS(bn_aware=True).score(learner, tasks, names).scores
    n = f"{layer}.weight"
    assert torch.allclose(plain1[n][chan], c ** 2 * plain0[n][chan], rtol=1e-6)
    assert torch.allclose(aware1[n][chan], aware0[n][chan], rtol=1e-3)
    for other in names:
        assert torch.allclose(aware1[other], aware0[other], rtol=1e-3), other
    # the head has no BatchNorm after it: the same scores either way
    assert torch.equal(aware0["head.weight"], plain0["head.weight"])


def test_anp_hessian_matches_manual_adapt_and_record() -> None:
    """H of the head = mean of [z; 1][z; 1]^T with z the features under the adapted weights."""
    tasks = image_tasks(2)
    learner = conv_learner(steps=2)
    h = ANP(h_data="support").hessians(learner, tasks, ["head.weight"])["head.weight"]
    rows = []
    for t in tasks:
        a = learner.adapt(t.support_x, t.support_y)
        feats = {k[len("features."):]: v.detach() for k, v in a.params.items()
                 if k.startswith("features.")}
        with torch.no_grad():
            z = torch.func.functional_call(learner.model.features, feats, (t.support_x,))
        rows.append(torch.cat([z.flatten(1), torch.ones(len(z), 1)], 1).double())
    r = torch.cat(rows)
    assert torch.allclose(h, r.T @ r / len(r), rtol=1e-5, atol=1e-7)


def test_obs_compensation_through_criterion_reduces_layer_error_and_keeps_zeros() -> None:
    tasks = image_tasks()
    learner = conv_learner(steps=1)
    names = prunable_weights(learner.model)
    crit = ANP(h_data="both", compensation="joint")
    sc = crit.score(learner, tasks, names)
    H = crit.hessians(learner, tasks, names)
    masks = allocate(sc.scores, 0.5)
    mods = dict(learner.model.named_modules())
    before = {n: weight_matrix(mods[n[:-7]]).detach().double().clone() for n in names}
    crit.compensate(learner, sc, masks)
    learner.set_masks(masks)
    strict = 0
    for n in names:
        mod = mods[n[:-7]]
        k = mod.weight[0].numel()
        m = torch.cat([masks[n].reshape(mod.weight.shape[0], -1),
                       torch.ones(mod.weight.shape[0], 1)], 1).double()
        plain = before[n] * m - before[n]                     # masking only
        comp = weight_matrix(mod).detach().double() - before[n]
        err_plain = torch.einsum("od,de,oe->", plain, H[n], plain)
        err_comp = torch.einsum("od,de,oe->", comp, H[n], comp)
        assert err_comp <= err_plain * (1 + 1e-9) + 1e-15, n
        strict += bool(err_comp < 0.99 * err_plain)
        assert bool((mod.weight.reshape(mod.weight.shape[0], -1)[:, :k][m[:, :k] == 0] == 0)
                    .all())
    assert strict >= 2  # (the last conv sees 1x1 maps: its padded taps carry no signal)


def tiny_mlp_learner(first_order: bool = False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return build_learner("maml", model, inner_lr=0.5, inner_steps=1, first_order=first_order)


def tiny_task(seed: int = 1) -> Task:
    g = torch.Generator().manual_seed(seed)
    return Task(torch.randn(6, 4, generator=g, dtype=torch.float64), torch.arange(3).repeat(2),
                torch.randn(9, 4, generator=g, dtype=torch.float64), torch.arange(3).repeat(3))


def test_taylor_meta_is_second_order_and_differs_from_first_order() -> None:
    learner = tiny_mlp_learner()
    task = tiny_task()
    names = ["0.weight", "2.weight"]
    so = get_criterion("taylor-meta").score(learner, [task], names).scores
    fo = get_criterion("taylor-meta-fo").score(learner, [task], names).scores
    assert not torch.allclose(so["0.weight"], fo["0.weight"], rtol=1e-3)
    # |dL_meta/dw * w| against a central finite difference of the meta-objective
    p = dict(learner.model.named_parameters())["0.weight"]
    idx, eps = (1, 2), 1e-6

    def meta_loss() -> float:
        return learner.task_loss(task, create_graph=False)[0].item()

    fd = central_difference(meta_loss, p, idx, eps)
    assert so["0.weight"][idx].item() == pytest.approx(abs(fd * p[idx].item()), rel=1e-5)


def test_magnitude_random_and_registry() -> None:
    learner = conv_learner()
    names = prunable_weights(learner.model)
    mag = get_criterion("magnitude").score(learner, [], names).scores
    params = learner.params()
    assert all(torch.equal(mag[n], params[n].detach().abs()) for n in names)
    r1 = get_criterion("random", seed=3).score(learner, [], names, seed=1).scores
    r2 = get_criterion("random", seed=3).score(learner, [], names, seed=1).scores
    r3 = get_criterion("random", seed=3).score(learner, [], names, seed=2).scores
    assert all(torch.equal(r1[n], r2[n]) for n in names)
    assert not torch.equal(r1[names[1]], r3[names[1]])
    with pytest.raises(ValueError, match="unknown pruning method"):
        get_criterion("nope")
    with pytest.raises(ValueError):
        get_criterion("magnitude", h_data="support")
    with pytest.raises(ValueError, match="h_data"):
        get_criterion("anp", h_data="train")


def test_protonet_head_without_input_falls_back_to_magnitude() -> None:
    torch.manual_seed(0)
    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=12)
    learner = build_learner("protonet", model)
    names = prunable_weights(model)
    with pytest.warns(UserWarning, match="no input"):
        sc = ANP().score(learner, image_tasks(2), names)
    assert "head.weight" not in sc.hinv and "features.0.0.weight" in sc.hinv
    assert torch.equal(sc.scores["head.weight"], model.head.weight.detach().double() ** 2)


def _dense_joint_reference(weight: torch.Tensor, hinv: torch.Tensor, pruned: torch.Tensor
                           ) -> torch.Tensor:
    """The joint OBS change as it was first written: one d x d solve per unit."""
    m = pruned.double()
    A = m[:, :, None] * hinv[None] * m[:, None, :] + torch.diag_embed(1 - m)
    z = torch.linalg.solve(A, (m * weight.double()).unsqueeze(-1)).squeeze(-1)
    return -(z @ hinv)


@pytest.mark.parametrize("d,sparsity", [(7, 0.3), (40, 0.5), (90, 0.85), (90, 0.97)])
def test_block_compensation_equals_the_dense_solve(d: int, sparsity: float) -> None:
    from metaprune.pruning.criteria import obs_compensation

    g = torch.Generator().manual_seed(d)
    X = torch.randn(3 * d, d, generator=g, dtype=torch.float64)
    H = X.T @ X / X.shape[0] + 1e-3 * torch.eye(d, dtype=torch.float64)
    hinv = torch.linalg.inv(H)
    W = torch.randn(12, d, generator=g, dtype=torch.float64)
    P = torch.rand(12, d, generator=g) < sparsity
    P[0] = False            # a unit that loses nothing
    P[1, :-1] = True        # a unit that keeps one weight
    ref = _dense_joint_reference(W, hinv, P)
    pruned_block = obs_compensation(W, hinv, P, "joint", chunk_bytes=4096)
    survivor_block = obs_compensation(W, hinv, P, "joint", hessian=H, chunk_bytes=4096)
    assert torch.allclose(pruned_block, ref, atol=1e-10, rtol=0)
    assert torch.allclose(survivor_block, ref, atol=1e-10, rtol=0)
    assert torch.allclose(survivor_block[P], -W[P], atol=1e-10, rtol=0)  # pruned end at 0
    assert bool((ref[0] == 0).all()) and bool(ref[2:].abs().sum() > 0)


def test_block_compensation_of_fully_pruned_units_and_one_input_layers() -> None:
    from metaprune.pruning.criteria import obs_compensation

    for d in (1, 3):
        H = torch.eye(d, dtype=torch.float64) * 2 + 0.1
        hinv = torch.linalg.inv(H)
        W = torch.arange(1.0, 3 * d + 1, dtype=torch.float64).reshape(3, d)
        P = torch.zeros(3, d, dtype=torch.bool)
        P[:2] = True                      # two units lose every weight, one keeps all
        for h in (None, H):
            delta = obs_compensation(W, hinv, P, "joint", hessian=h)
            assert torch.allclose(delta[:2], -W[:2], atol=1e-12) and bool((delta[2] == 0).all())
