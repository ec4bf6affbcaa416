"""CAVIA: only the context adapts; exact meta-gradient through the context update; FiLM
generators are learner state (saved, never pruned)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import central_difference

from metaprune.checkpoint import load_checkpoint, save_checkpoint
from metaprune.data.glyphs import glyphs
from metaprune.data.tasks import TaskSampler
from metaprune.deploy.format import mpz_from_learner, save_mpz
from metaprune.deploy.runtime import DeviceModel
from metaprune.learners import CAVIA, build_learner
from metaprune.models import build_model
from metaprune.pruning import prune


def tiny(dtype=torch.float32, **kw) -> CAVIA:
    torch.manual_seed(0)
    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=12).to(dtype)
    learner = build_learner("cavia", model, inner_lr=0.5, inner_steps=2, context_dim=6, **kw)
    learner.film.to(dtype)
    return learner


@pytest.fixture(scope="module")
def sampler():
    return TaskSampler(glyphs("train", num_classes=10, samples_per_class=4, image_size=12),
                       3, 1, 2)


def fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same conv4 weights in a new module: no FiLM hooks, the original block order."""
    twin = build_model("conv4", **model.config)
    twin.load_state_dict(model.state_dict())
    return twin


def test_only_the_context_adapts_and_a_zero_context_is_the_generator_bias(sampler):
    from metaprune.models.layers import add_film_hooks

    learner = tiny()
    task = sampler.task(0)
    plain = fresh_copy(learner.model)
    gamma, beta = learner.film["b2_bias"].detach().chunk(2)
    add_film_hooks(plain, [2], lambda _b, _out: (gamma, beta))
    with torch.no_grad():
        assert torch.equal(learner.forward(learner.params(), task.query_x), plain(task.query_x))
    adapted = learner.adapt(task.support_x, task.support_y)
    for n, p in learner.model.named_parameters():
        assert adapted.params[n] is p  # the weights are the meta-parameters, untouched
    assert adapted.params["context"].abs().sum() > 0
    assert learner.adapt_names == ["context"]


def test_meta_gradient_through_the_context_update_matches_finite_differences(sampler):
    learner = tiny(torch.float64)
    task = sampler.task(1).to("cpu")
    task.support_x, task.query_x = task.support_x.double(), task.query_x.double()

    def meta_loss() -> float:
        return learner.task_loss(task, create_graph=False)[0].item()

    loss, _ = learner.task_loss(task)
    named = learner.meta_parameters()
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()))))
    for name, idx in [("model.features.0.0.weight", (1, 0, 1, 2)),
                      ("model.head.weight", (2, 3)), ("film.b2_weight", (3, 4)),
                      ("film.b2_bias", (5,))]:
        fd = central_difference(meta_loss, named[name], idx)
        assert grads[name][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), name
    assert abs(grads["film.b2_weight"]).sum() > 0


def test_save_load_prune_and_export(sampler, tmp_path):
    learner = tiny()
    learner.meta_step(sampler.batch(0, 2))
    prune(learner, sampler, method="anp", sparsity=0.5, schedule="one-shot", retrain_iters=2,
          meta_batch=2, tasks=2, progress=False)
    assert all(k.startswith("features.") or k.startswith("head.") for k in learner.masks)
    save_checkpoint(tmp_path / "c", learner)
    back = load_checkpoint(tmp_path / "c").learner
    assert isinstance(back, CAVIA) and back.context_dim == 6 and back.film_blocks == [2]
    for k, v in learner.extra_state().items():
        assert torch.equal(v, back.extra_state()[k]), k
    task = sampler.task(7)
    assert back.evaluate_task(task) == learner.evaluate_task(task)
    for n, m in back.masks.items():  # pruned weights still exactly 0
        assert float(dict(back.model.named_parameters())[n].detach()[m == 0].abs().max()) == 0
    # the device: the .mpz stores the FiLM generators and the rule; the runtime adapts the
    # context only and predicts as the library does (query-batch BatchNorm, bn="batch")
    path = save_mpz(tmp_path / "c.mpz", mpz_from_learner(back))
    dm = DeviceModel.load(path)
    assert dm.rule["kind"] == "context" and dm.rule["context_dim"] == 6
    adapted = dm.adapt(task.support_x, task.support_y)
    lib = back.adapt(task.support_x, task.support_y, steps=back.eval_inner_steps)
    with torch.no_grad():
        expected = back.forward({n: p.detach() for n, p in lib.params.items()}, task.query_x)
    torch.testing.assert_close(adapted.logits(task.query_x, bn="batch"), expected,
                               rtol=1e-5, atol=1e-5)
    for n, p in dm.model.named_parameters():  # weights as stored, pruned ones exactly 0
        assert torch.equal(adapted.params[n], p)
        if n in dm.masks:
            assert float(p[~dm.masks[n]].abs().max()) == 0.0
    single = adapted.logits(task.query_x[:1])   # frozen support statistics: batch 1 works
    torch.testing.assert_close(single, adapted.logits(task.query_x)[:1], rtol=1e-5, atol=1e-6)
    film = dm.mpz.film["b2_weight"].clone()
    dm.mpz.film["b2_weight"] = film[:, :3]
    with pytest.raises(ValueError, match="FiLM generator of block 2"):
        DeviceModel(dm.mpz, "c.mpz")


def test_bad_options_are_refused():
    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=12)
    with pytest.raises(ValueError, match="film_blocks"):
        build_learner("cavia", model, film_blocks=[7])
    with pytest.raises(ValueError, match="model.features"):
        build_learner("cavia", torch.nn.Linear(4, 3))
    for bad in ({"film_blocks": [2, 2]}, {"context_dim": "abc"}, {"context_dim": 1.7},
                {"film_blocks": 2}):
        with pytest.raises(ValueError, match="distinct indices"):
            build_learner("cavia", model, **bad)


def test_adapted_cavia_model_exports_to_onnx_with_its_film(tmp_path):
    pytest.importorskip("onnxruntime")
    from metaprune.deploy.onnx_export import export_onnx, onnx_max_abs_diff

    torch.manual_seed(0)
    model = build_model("conv4", n_way=5, in_channels=1, width=8, image_size=28)
    learner = build_learner("cavia", model, inner_lr=1.0, context_dim=6)
    with torch.no_grad():
        for p in learner.film.values():
            p.normal_(0, 0.5)  # a FiLM far from the identity: dropping it would show
    dm = DeviceModel.load(save_mpz(tmp_path / "c.mpz", mpz_from_learner(learner)))
    adapted = dm.adapt(torch.rand(5, 1, 28, 28), torch.arange(5))
    q = torch.rand(4, 1, 28, 28)
    plain = copy.deepcopy(adapted)
    plain.film, plain._module = {}, None
    assert (plain.logits(q) - adapted.logits(q)).abs().max() > 1e-2
    export_onnx(adapted, tmp_path / "c.onnx", q)
    assert onnx_max_abs_diff(tmp_path / "c.onnx", adapted, q) < 1e-4


def test_adaptation_shift_sees_the_context_change_the_layer_inputs(sampler):
    """With CAVIA the weights never move, yet the FiLMed block changes what the next layers
    see: adaptation-shift reports zero weight change and a non-zero dH for them."""
    from metaprune.pruning.diagnostics import adaptation_shift

    learner = tiny()
    with torch.no_grad():
        for p in learner.film.values():
            p.normal_(0, 0.5)
    rows = {r["layer"]: r for r in adaptation_shift(learner, sampler.batch(0, 3),
                                                    sampler.batch(3, 3), 0.5)}
    assert all(r["weight_change"] == 0 for r in rows.values())
    after = [n for n in rows if n.startswith(("features.3", "head"))]  # after the FiLM (block 2)
    before = [n for n in rows if n.startswith(("features.0", "features.1", "features.2"))]
    assert after and all(rows[n]["dH_adapt"] > 1e-6 for n in after)
    assert all(rows[n]["dH_adapt"] == 0 for n in before)


def test_film_sits_where_cavia_puts_it_conv_batchnorm_pool_film_relu():
    """Reference: CAVIA's own forward (its classification model), conv - BatchNorm - pool -
    FiLM ``gamma * h + beta`` - ReLU, written out; the learner gives the same logits for
    contexts whose gammas have both signs (where pooling after the ReLU would differ)."""
    import torch.nn.functional as F

    learner = tiny(torch.float64)
    x = torch.rand(6, 1, 12, 12, dtype=torch.float64)
    ctx = (3.0 * torch.randn(6, dtype=torch.float64)).requires_grad_()
    params = {**learner.params(), "context": ctx}
    gamma, beta = F.linear(ctx, learner.film["b2_weight"], learner.film["b2_bias"]).chunk(2)
    assert float(gamma.detach().min()) < 0 < float(gamma.detach().max())
    h = x
    for i, block in enumerate(learner.model.features):
        conv, bn = block[0], block[1]
        h = F.batch_norm(conv(h), None, None, bn.weight, bn.bias, training=True)  # no hook
        if len(block) == 4:  # conv4 stops pooling once the map is 1x1
            h = F.max_pool2d(h, 2)
        if i == 2:
            h = gamma.view(1, -1, 1, 1) * h + beta.view(1, -1, 1, 1)
        h = F.relu(h)
    expected = learner.model.head(h.flatten(1))
    got = learner.forward(params, x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # the inner loop's gradient: the same through both
    g_got, = torch.autograd.grad(got.square().sum(), ctx)
    g_ref, = torch.autograd.grad(expected.square().sum(), ctx)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-10, atol=1e-12)


def test_film_generator_starts_as_cavias():
    """Weight Kaiming-uniform (bound sqrt(3 / context_dim)), bias nn.Linear's default (bound
    1 / sqrt(context_dim)); CAVIA's own hyper-parameters by default."""
    learner = build_learner("cavia", build_model("conv4", width=64))
    w, b = learner.film["b2_weight"], learner.film["b2_bias"]
    assert w.shape == (128, 100) and b.shape == (128,)
    for t, bound in ((w, (3 / 100) ** 0.5), (b, 0.1)):
        assert 0.9 * bound < float(t.abs().max()) <= bound
    assert (learner.inner_lr, learner.inner_steps, learner.eval_inner_steps) == (1.0, 2, 2)
    from metaprune.config import load_config

    assert load_config(None, ["learner.name=cavia"])["learner"] | {"name": 0} == {
        "name": 0, "inner_lr": 1.0, "inner_steps": 2, "eval_inner_steps": 2, "meta_lr": 1e-3}
    # what a config sets wins
    assert load_config(None, ["learner.name=cavia", "learner.inner_steps=1"]
                       )["learner"]["inner_steps"] == 1


def test_film_site_moves_the_relu_once_and_refuses_other_blocks():
    from metaprune.models.layers import FixedFiLM, film_site, insert_film

    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=12)
    x = torch.rand(4, 1, 12, 12)
    before = model(x)
    block = model.features[0]
    site = film_site(block)
    assert [type(m).__name__ for m in block] == ["Conv2d", "BatchNorm2d", "MaxPool2", "ReLU"]
    assert film_site(block) is site  # idempotent
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # the same function
    assert sorted(model.state_dict()) == sorted(build_model(
        "conv4", n_way=3, in_channels=1, width=4, image_size=12).state_dict())
    last = model.features[3]  # 12 -> 6 -> 3 -> 1: no pooling, FiLM on the BatchNorm output
    assert film_site(last) is last[1]
    insert_film(model, {0: (torch.ones(4), torch.zeros(4))})
    assert isinstance(block[3], FixedFiLM)
    with pytest.raises(ValueError, match="fixed FiLM already"):
        film_site(block)
    with pytest.raises(ValueError, match="FiLM needs a block"):
        build_learner("cavia", build_model("resnet12", widths=[4, 4, 4, 4], image_size=12))
    # a refused block leaves no hook behind on the blocks before it
    from metaprune.models.layers import add_film_hooks

    model = build_model("conv4", n_way=3, in_channels=1, width=4, image_size=12)
    model.features[2] = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(ValueError, match="FiLM needs a block"):
        add_film_hooks(model, [0, 1, 2], lambda _b, out: (out.new_ones(4), out.new_zeros(4)))
    assert not any(m._forward_hooks for m in model.modules())



def test_a_checkpoint_without_the_film_site_is_refused(tmp_path):
    """A CAVIA checkpoint from before FiLM sat where CAVIA puts it computes differently: its
    sidecar lacks learner.film_site, and loading or resuming it is refused, naming the key."""
    import json

    from metaprune.checkpoint import CheckpointError, restore_checkpoint

    learner = tiny()
    assert learner.config()["film_site"] == "pool_film_relu"
    with pytest.raises(ValueError, match="film_site"):
        build_learner("cavia", fresh_copy(learner.model), film_site="block_output")
    save_checkpoint(tmp_path / "c", learner)
    load_checkpoint(tmp_path / "c")  # the current form loads
    doc = json.loads((tmp_path / "c.json").read_text())
    del doc["learner"]["film_site"]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="learner.film_site is None"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointError, match="learner.film_site is None"):
        restore_checkpoint(tiny(), tmp_path / "c")


def test_device_inference_module_carries_the_adapted_film_as_a_layer(sampler, tmp_path):
    """The adapted model's inference module (what ONNX export traces) has the task's FiLM as a
    layer, equal to the frozen network with the FiLM hook; an .mpz without rule.film_site is
    refused."""
    from metaprune.deploy.format import FormatError, load_mpz
    from metaprune.deploy.runtime import freeze_batchnorm
    from metaprune.models.layers import FixedFiLM, add_film_hooks

    learner = tiny()
    with torch.no_grad():
        for p in learner.film.values():
            p.normal_(0, 2.0)
    dm = DeviceModel.load(save_mpz(tmp_path / "c.mpz", mpz_from_learner(learner)))
    task = sampler.task(3)
    adapted = dm.adapt(task.support_x, task.support_y)
    (gamma, _beta), = adapted.film.values()
    assert float(gamma.detach().min()) < 0 < float(gamma.detach().max())
    module = adapted.inference_module()  # BatchNorm folded; FiLM stays a layer
    assert sum(isinstance(m, FixedFiLM) for m in module.modules()) == 1
    assert not any(m._forward_hooks for m in module.modules())
    ref = copy.deepcopy(dm.model)
    ref.load_state_dict(adapted.params, strict=False)
    freeze_batchnorm(ref, adapted.bn_stats)
    add_film_hooks(ref, list(adapted.film), lambda b, _out: adapted.film[b])
    with torch.no_grad():
        expected = ref.eval()(task.query_x)
        got = module(task.query_x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapted.logits(task.query_x), expected, rtol=1e-5, atol=1e-5)
    # an .mpz whose rule does not record the FiLM placement is refused, naming the field
    mpz = mpz_from_learner(learner)
    del mpz.meta["rule"]["film_site"]
    save_mpz(tmp_path / "old.mpz", mpz)
    with pytest.raises(FormatError, match="rule.film_site"):
        load_mpz(tmp_path / "old.mpz")
