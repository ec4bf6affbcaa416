"""Structured ANP through Torch-Pruning's dependency graph on ResNet-12: channels shared across
a skip connection are removed together (exact counts), the slim network computes what the
masked one does (before and after adaptation), it saves, loads, resumes, adapts with the device
runtime and exports to ONNX; a model Torch-Pruning cannot trace is refused naming the layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metaprune.checkpoint import load_checkpoint
from metaprune.data import TaskSampler
from metaprune.data.glyphs import glyphs
from metaprune.data.tasks import Task
from metaprune.deploy.format import mpz_from_learner, save_mpz
from metaprune.deploy.runtime import DeviceModel
from metaprune.learners import build_learner
from metaprune.models import build_model
from metaprune.pruning.structured import (
    UntraceableModelError,
    channel_groups,
    example_input,
    group_widths,
    plan_step,
    slim_learner,
    structured_anp,
)

SIZE = 12
WIDTHS = [6, 8, 10, 12]
# per group: block b's conv1, conv2 and output (conv3 + shortcut) channels
TARGET = [3, 4, 5, 4, 5, 6, 5, 6, 7, 6, 7, 8]


def tasks(n: int = 3, seed: int = 0) -> list[Task]:
    g = torch.Generator().manual_seed(seed)
    return [Task(torch.rand(5, 1, SIZE, SIZE, generator=g), torch.arange(5),
                 torch.rand(10, 1, SIZE, SIZE, generator=g), torch.arange(5).repeat(2))
            for _ in range(n)]


def resnet(seed: int = 0):
    torch.manual_seed(seed)
    return build_learner("maml", build_model("resnet12", widths=WIDTHS, in_channels=1,
                                             image_size=SIZE), inner_lr=0.3, eval_inner_steps=2)


def test_groups_follow_the_skip_connections() -> None:
    lr = resnet()
    groups = channel_groups(lr.model, example_input(lr.model, tasks(1)))
    assert [g.name for g in groups] == [f"features.{b}.conv{i}" for b in range(4)
                                        for i in (1, 2, 3)]
    assert [g.width for g in groups] == [w for w in WIDTHS for _ in range(3)]
    out = groups[2]  # block 0's output: conv3 and the shortcut are added
    assert set(out.producers) == {"features.0.conv3", "features.0.shortcut.0"}
    assert set(out.consumers) == {"features.1.conv1", "features.1.shortcut.0"}
    assert set(groups[-1].consumers) == {"head"}       # the classes are never a group
    assert group_widths(lr.model) == [g.width for g in groups]


def test_slim_resnet12_exact_counts_equivalence_masks_and_moments() -> None:
    lr = resnet()
    ts = tasks()
    lr.meta_step(ts)                                     # Adam moments to carry over
    w0 = dict(lr.model.named_parameters())["features.2.conv2.weight"]
    prior = (torch.rand(w0.shape, generator=torch.Generator().manual_seed(1)) > 0.3).float()
    lr.set_masks({"features.2.conv2.weight": prior})     # an earlier unstructured mask
    plan, masks = plan_step(lr, ts, TARGET)
    assert plan.widths == TARGET
    sl = slim_learner(lr, plan)
    m = sl.model
    c_in = 1
    expected = 0
    for b, blk in enumerate(m.features):
        c1, c2, c3 = TARGET[3 * b: 3 * b + 3]
        assert blk.conv1.out_channels == blk.bn1.num_features == blk.conv2.in_channels == c1
        assert blk.conv2.out_channels == blk.bn2.num_features == blk.conv3.in_channels == c2
        assert (blk.conv3.out_channels == blk.bn3.num_features == blk.shortcut[0].out_channels
                == blk.shortcut[1].num_features == c3)
        assert blk.conv1.in_channels == blk.shortcut[0].in_channels == c_in
        expected += 9 * (c_in * c1 + c1 * c2 + c2 * c3) + c_in * c3 + 2 * (c1 + c2 + 2 * c3)
        c_in = c3
    assert m.head.in_features == TARGET[-1]
    expected += 5 * TARGET[-1] + 5
    assert sum(p.numel() for p in m.parameters()) == expected
    assert m.model_spec["name"] == "resnet12"
    assert m.model_spec["kwargs"]["slim"]["features.0.shortcut.0.weight"] == [5, 1, 1, 1]
    # the masked full-width model zeroes exactly the removed producer rows / consumer columns
    full = dict(lr.model.named_parameters())
    gone0 = sorted(set(range(6)) - set(plan.keep[2]))
    for name in ("features.0.conv3.weight", "features.0.shortcut.0.weight"):
        assert bool((full[name][gone0] == 0).all()) and bool((full[name][plan.keep[2]] != 0)
                                                             .any(1).all())
    for name in ("features.1.conv1.weight", "features.1.shortcut.0.weight"):
        assert bool((full[name][:, gone0] == 0).all())
    # same outputs, before and after adaptation
    x = torch.rand(7, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert (lr.model(x) - m(x)).abs().max().item() <= 1e-5
    t = tasks(1, seed=5)[0]
    a_full = lr.adapt(t.support_x, t.support_y, steps=2)
    a_slim = sl.adapt(t.support_x, t.support_y, steps=2)
    with torch.no_grad():
        out_full = functional_call(lr.model, a_full.params, (t.query_x,))
        out_slim = functional_call(m, a_slim.params, (t.query_x,))
    assert (out_full - out_slim).abs().max().item() <= 1e-4
    # the earlier mask and the Adam moments of the surviving entries are carried over
    rows, cols = torch.tensor(plan.keep[7]), torch.tensor(plan.keep[6])
    assert torch.equal(sl.masks["features.2.conv2.weight"], prior[rows][:, cols])
    i_full = list(lr.meta_parameters()).index("model.features.2.conv2.weight")
    i_slim = list(sl.meta_parameters()).index("model.features.2.conv2.weight")
    moments_full = lr.optimizer_state()["state"][i_full]["exp_avg"]
    moments_slim = sl.optimizer_state()["state"][i_slim]["exp_avg"]
    assert torch.equal(moments_slim, moments_full[rows][:, cols])
    sl.meta_step(ts)                                     # the rebuilt optimiser steps
    assert bool((dict(m.named_parameters())["features.2.conv2.weight"]
                 [sl.masks["features.2.conv2.weight"] == 0] == 0).all())


class Interrupting:
    """A glyphs task stream that raises KeyboardInterrupt at its ``stop_at``-th batch."""

    def __init__(self, stop_at: int | None):
        self.base = TaskSampler(glyphs("train", num_classes=10, samples_per_class=4,
                                       image_size=SIZE), 5, 1, 2)
        self.stop_at, self.calls = stop_at, 0

    def batch(self, start: int, size: int) -> list[Task]:
        self.calls += 1
        if self.stop_at is not None and self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.base.batch(start, size)


def test_structured_resnet12_run_saves_loads_and_resumes(tmp_path) -> None:
    dense = resnet()
    opts = dict(rounds=2, retrain_iters=4, meta_batch=2, tasks=2, checkpoint_every=2,
                out_dir=tmp_path / "s", log=lambda m: None)
    with pytest.raises(KeyboardInterrupt):  # killed inside round 1's re-training
        structured_anp(copy.deepcopy(dense), Interrupting(stop_at=5), keep=0.5, **opts)
    assert (tmp_path / "s" / "work.json").exists()
    resumed, plans = structured_anp(copy.deepcopy(dense), Interrupting(None), keep=0.5, **opts)
    fresh, _ = structured_anp(copy.deepcopy(dense), Interrupting(None), keep=0.5,
                              **{**opts, "out_dir": tmp_path / "ref"})
    a, b = resumed.model.state_dict(), fresh.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert plans[-1].widths == [3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6]
    ck = load_checkpoint(tmp_path / "s" / "round02")
    assert group_widths(ck.learner.model) == plans[-1].widths
    assert ck.meta["structured"]["widths"] == plans[-1].widths
    got = ck.learner.model.state_dict()
    assert all(torch.equal(got[k], a[k]) for k in a)
    assert ck.learner.optimizer_state() is not None        # resumable re-training state


def test_slim_resnet12_adapts_on_device_and_exports_to_onnx(tmp_path) -> None:
    lr = resnet()
    plan, _ = plan_step(lr, tasks(), TARGET)
    sl = slim_learner(lr, plan)
    dm = DeviceModel.load(save_mpz(tmp_path / "s.mpz", mpz_from_learner(sl)))
    t = tasks(1, seed=2)[0]
    ref = sl.adapt(t.support_x, t.support_y, steps=2)
    got = dm.adapt(t.support_x, t.support_y)
    for n, p in ref.params.items():
        assert (got.params[n] - p.detach()).abs().max().item() <= 1e-6, n
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from metaprune.deploy.onnx_export import export_onnx, onnx_max_abs_diff

    path = export_onnx(got, tmp_path / "s.onnx", t.support_x)
    assert onnx_max_abs_diff(path, got, t.query_x) <= 1e-4
    assert onnx_max_abs_diff(path, got, t.query_x[:1]) <= 1e-4


class Functional(nn.Module):
    """conv2's weight is used without calling conv2: its input channels are invisible."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(F.relu(self.conv1(x)), self.conv2.weight, padding=1)
        return self.head(h.mean((2, 3)))


class Picky(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 100:
            raise RuntimeError("needs a batch of 100")
        return x


class Failing(Functional):
    def __init__(self):
        super().__init__()
        self.gate = Picky()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.gate(self.conv1(x))).mean((2, 3)))


class Bare(Functional):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.conv1(x) * self.scale).mean((2, 3)))


@pytest.mark.parametrize("model, match", [
    (Functional(), r"layer 'conv2' \(Conv2d\) is not called as a layer \(its weight used directly"),
    (Failing(), r"forward failed in layer 'gate' \(Picky\): RuntimeError: needs a batch"),
    (Bare(), r"uses parameter 'scale' outside a Conv2d/Linear/BatchNorm layer"),
])
def test_untraceable_models_are_refused_naming_the_layer(model: nn.Module, match: str) -> None:
    lr = build_learner("maml", model, inner_lr=0.3)
    with pytest.raises(UntraceableModelError, match=match):
        plan_step(lr, tasks(1), [2], channel_criterion="l1")
    assert issubclass(UntraceableModelError, ValueError)   # the CLI reports it as bad input


def test_slim_specs_are_checked() -> None:
    from metaprune.models.registry import build_on_meta

    ok = build_model("conv4", width=8, slim={"features.0.0.weight": [3, 1, 3, 3]})
    assert ok.features[0][0].out_channels == 3 and ok.features[0][0].weight.shape[0] == 3
    with pytest.raises(ValueError, match=r"shape \[9, 1, 3, 3\] of 'features.0.0.weight' does "
                                         r"not shrink"):
        build_model("conv4", width=8, slim={"features.0.0.weight": [9, 1, 3, 3]})
    with pytest.raises(ValueError, match="names 'nope', which is not a parameter"):
        build_model("conv4", width=8, slim={"nope": [1]})
    with pytest.raises(ValueError, match="model kwargs 'slim' must map"):
        build_on_meta("conv4", {"width": 8, "slim": {"head.weight": [10**9, 1]}}, "file")


def test_anp_needs_every_consumer_to_see_inputs() -> None:
    """ProtoNet never calls its head, so the head's channel OBS has no Hessian: a clear error;
    the channel baselines need none."""
    lr = build_learner("protonet", build_model("conv4", width=8, image_size=SIZE))
    with pytest.raises(ValueError, match="layer 'head' reads pruned channels but saw no input"):
        plan_step(lr, tasks(1), [4, 4, 4, 4])
    lr = build_learner("protonet", build_model("conv4", width=8, image_size=SIZE))
    plan, _ = plan_step(lr, tasks(1), [4, 4, 4, 4], channel_criterion="l1")
    assert group_widths(slim_learner(lr, plan).model) == [4, 4, 4, 4]
