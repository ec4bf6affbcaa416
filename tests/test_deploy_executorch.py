"""ExecuTorch export (issue 22): on the same episode, adaptation and prediction through the
ExecuTorch runtime equal the PyTorch device runtime (same predicted classes, adapted tensors
within 1e-5, pruned weights exactly 0 after every step), for MAML, ANIL, Meta-SGD, ProtoNet
and CAVIA, dense and pruned, Conv4 and the structured slim model; the exported max-pooling
equals max-pooling in eager (values, gradients, tied maxima), and so does the
channel-major network (outputs, every gradient); the CLI end to end; bad input gets a clear
error.

Each case exports one tiny two-block model: the ExecuTorch compilation passes, whose time
grows with the number of graph operations, dominate the run time."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from metaprune.cli import main
from metaprune.deploy.format import mpz_from_learner, save_mpz
from metaprune.deploy.runtime import DeviceModel
from metaprune.learners import build_learner
from metaprune.models import build_model

pytest.importorskip("executorch")  # a fallback only: the test extra installs executorch

from metaprune.deploy.executorch_export import (  # noqa: E402
    BatchStatsNorm,
    BlendReLU,
    CnhwSequential,
    blend_pool2,
    build_program,
    exportable,
)
from metaprune.deploy.executorch_runtime import ExecuTorchModel  # noqa: E402

N_WAY, K_SHOT, SHAPE = 5, 2, (1, 12, 12)


def learner_for(name: str, pruned: bool, arch: str = "conv4", seed: int = 0):
    """A tiny learner; ``pruned``: random 80 % masks on every conv/linear weight but the first
    conv (kept dense as the CLI's default preset does: a 1-channel 3x3 filter pruned at
    random is often all zero, and BatchNorm of the constant map it outputs normalises
    rounding noise, which two runtimes round differently)."""
    torch.manual_seed(seed)
    # two blocks at 12 px: every layer type of Conv4, half its graph (export time grows with
    # the number of operations, not with their size)
    net = build_model(arch, image_size=12, **({"width": 8, "depth": 2} if arch == "conv4"
                                             else {"widths": [6, 4]}))
    kw = {"context_dim": 4, "film_blocks": [0, 1]} if name == "cavia" else {}
    learner = build_learner(name, net, inner_lr=0.3, eval_inner_steps=3, **kw)
    if name == "metasgd":
        with torch.no_grad():
            for p in learner.lrs.values():
                p.uniform_(0.05, 0.5)
    if pruned:
        g = torch.Generator().manual_seed(seed + 1)
        learner.set_masks({n: (torch.rand(p.shape, generator=g) >= 0.8).float()
                           for n, p in net.named_parameters()
                           if p.dim() > 1 and n != "features.0.0.weight"})
    return learner


def episode(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(N_WAY * K_SHOT, *SHAPE, generator=g)
    qx = torch.rand(4 * N_WAY, *SHAPE, generator=g)
    return sx, torch.arange(N_WAY).repeat(K_SHOT), qx  # labels interleaved, not sorted


# the default delegate; the CLI test exports with --delegate portable
CASES = [("maml", True, "conv4", "xnnpack"), ("maml", False, "conv4-slim", "xnnpack"),
         ("anil", True, "conv4", "xnnpack"), ("metasgd", True, "conv4", "xnnpack"),
         ("protonet", True, "conv4", "xnnpack"), ("cavia", False, "conv4", "xnnpack")]


def delegated_methods(data: bytes) -> dict[str, list[str]]:
    """Each method of a .pte program and the backends of its delegate calls."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    prog = deserialize_pte_binary(data)
    prog = getattr(prog, "program", prog)
    return {plan.name: [d.id for d in plan.delegates] for plan in prog.execution_plan}


@pytest.mark.parametrize("name,pruned,arch,delegate", CASES)
def test_executorch_adaptation_equals_pytorch_runtime(name: str, pruned: bool, arch: str,
                                                     delegate: str) -> None:
    learner = learner_for(name, pruned, arch)
    dm = DeviceModel(mpz_from_learner(learner))
    data, meta = build_program(dm, k_shot=K_SHOT, max_queries=8, delegate=delegate)
    backends = delegated_methods(data)
    # xnnpack: both methods' work is in XNNPACK partitions; portable: no partition at all
    want = ({m: {"XnnpackBackend"} for m in ("predict", "adapt_loss")
             if m == "predict" or name != "protonet"} if delegate == "xnnpack" else {})
    assert {m: set(b) for m, b in backends.items() if b} == want, backends
    assert meta["delegate"] == delegate
    em = ExecuTorchModel(data)
    sx, sy, qx = episode()
    for steps in range(dm.rule["steps"] + 1):  # every step: same tensors, pruned stay 0
        ref, got = dm.adapt(sx, sy, steps=steps), em.adapt(sx, sy, steps=steps)
        if name == "cavia":
            for b, (gamma, beta) in ref.film.items():
                ctx = got.adapted[0]
                g2, b2 = dm.film_of(ctx)[b]
                assert (g2 - gamma).abs().max().item() <= 1e-5
                assert (b2 - beta).abs().max().item() <= 1e-5
            continue
        assert set(got.params) == set(meta["adapt"])
        for n, p in got.params.items():
            assert (p - ref.params[n]).abs().max().item() <= 1e-5, (steps, n)
            keep = dm.masks.get(n)
            if keep is not None:
                assert bool((p[~keep] == 0).all()), (steps, n)
                assert int((p[keep] != 0).sum()) > 0
    assert meta["adapt"] == ([] if name == "protonet" else ["context"] if name == "cavia" else
                             ["head.weight", "head.bias"] if name == "anil" else
                             [n for n, _ in learner.model.named_parameters()])
    if steps and name != "protonet":  # adaptation moved something
        assert any(not torch.equal(t, t0) for t, t0 in
                   zip(got.adapted, [torch.zeros(4)] if name == "cavia" else
                       [dict(dm.model.named_parameters())[n] for n in meta["adapt"]]))
    # predictions: support-statistics BatchNorm, queries in chunks of max_queries (8)
    lr, lg = ref.logits(qx), got.logits(qx)
    assert torch.equal(lr.argmax(1), lg.argmax(1))
    assert (lr - lg).abs().max().item() <= 1e-4 * max(1.0, lr.abs().max().item())
    one = got.logits(qx[:1])  # batch 1 = the same image in a batch
    assert (one - lg[:1]).abs().max().item() <= 1e-5 * max(1.0, lr.abs().max().item())
    preds = got.predict(qx)
    assert [p.label for p in preds] == lr.argmax(1).tolist()


def test_blend_pool_equals_max_pool_in_eager() -> None:
    g = torch.Generator().manual_seed(0)
    for shape, ceil in [((3, 4, 8, 8), False), ((2, 3, 7, 5), False), ((2, 3, 7, 5), True),
                        ((2, 3, 6, 5), True), ((2, 3, 5, 6), True), ((2, 3, 4, 40), False),
                        ((2, 3, 4, 37), True)]:  # odd sizes, rows longer than PAIR_CHUNK
        x = torch.randn(*shape, generator=g)
        x[..., 0, 0] = x[..., 0, 1]  # tied maxima: the first gets the gradient, as max-pooling
        x[..., 3, 0] = 5 + x[..., 2, 0].abs()  # the window's maximum twice, across rows and
        x[..., 2, 1] = x[..., 3, 0]            # columns: the top row's entry is the first
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out_a, out_b = blend_pool2(a, ceil), F.max_pool2d(b, 2, ceil_mode=ceil)
        assert torch.equal(out_a, out_b)
        w = torch.randn(out_a.shape, generator=g)
        (out_a * w).sum().backward()
        (out_b * w).sum().backward()
        assert torch.equal(a.grad, b.grad)
    # after ReLU, tied zeros: amax splits the gradient, max-pooling gives it to one entry;
    # ReLU's backward then zeroes both (what Conv4 computes: conv, BN, ReLU, pool)
    x = torch.tensor([[[[-1.0, -2.0], [0.5, -3.0]], [[-1.0, -2.0], [-0.5, -3.0]]]])
    grads = []
    for p in (blend_pool2, lambda t: F.max_pool2d(t, 2)):
        t = x.clone().requires_grad_(True)
        p(F.relu(t)).sum().backward()
        grads.append(t.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("arch", ["conv4", "conv4-slim"])
def test_channel_major_network_equals_model_in_eager(arch: str) -> None:
    """The exported network (channel-major im2col convolutions, BatchNorm on (C, N, H, W),
    ReLU after the max-pool; as ``adapt_loss`` has it, blend pooling and BlendReLU, and as
    ``predict`` has it) against the model: outputs and every parameter's gradient."""
    net = learner_for("maml", False, arch).model
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(N_WAY * K_SHOT, *SHAPE, generator=g) > 0.5).float()  # binary: ties
    for blend_relu in (True, False):
        ex = exportable(net, blend_relu=blend_relu)
        assert isinstance(ex.features, CnhwSequential)
        assert any(isinstance(m, BlendReLU) for m in ex.modules()) == blend_relu
        assert [n for n, _ in ex.named_parameters()] == [n for n, _ in net.named_parameters()]
        ref, out = net(x), ex(x)
        assert (ref - out).abs().max().item() <= 1e-5
        grads = [torch.autograd.grad(F.cross_entropy(o, torch.arange(N_WAY).repeat(K_SHOT)),
                                     list(m.parameters())) for o, m in ((ref, net), (out, ex))]
        for a, b in zip(*grads):
            assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("channel_dim", [1, 0])
@pytest.mark.parametrize("n_support", [None, 3])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_stats_norm_equals_batchnorm_in_eager(channel_dim: int, n_support, affine) -> None:
    """BatchStatsNorm (NCHW or channel-major; batch or support statistics; with or without
    affine parameters) equals BatchNorm's formula with those statistics: values, gradients."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(4, affine=affine, track_running_stats=False)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    norm = BatchStatsNorm(bn, channel_dim, n_support)
    x = (2.0 + torch.randn(7, 4, 6, 5)).requires_grad_(True)
    s = x[:n_support] if n_support else x
    dims = [0, 2, 3]
    mean, var = s.mean(dims, keepdim=True), s.var(dims, unbiased=False, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + bn.eps)
    if affine:
        ref = ref * bn.weight[:, None, None] + bn.bias[:, None, None]
    out = norm(x.transpose(0, 1)).transpose(0, 1) if channel_dim == 0 else norm(x)
    assert (out - ref).abs().max().item() <= 1e-5
    w = torch.randn(ref.shape)
    params = [x, *([bn.weight, bn.bias] if affine else [])]
    g_ref = torch.autograd.grad((ref * w).sum(), params)
    g_out = torch.autograd.grad((out * w).sum(), params)
    for a, b in zip(g_ref, g_out):
        assert (a - b).abs().max().item() <= 1e-4


@pytest.mark.parametrize("channel_major", [False, True])
def test_batchnorm_in_executorch_is_as_accurate_as_eager(channel_major: bool) -> None:
    """Batch statistics over Omniglot's first-layer size (5 x 28 x 28 entries per channel)
    through the ExecuTorch runtime, against float64: no worse than 4x eager float32's error.
    ExecuTorch's own batch-norm kernel erred about 1000x eager here, enough to flip max-pooling
    windows between near-equal entries and route their gradients elsewhere."""
    from executorch.exir import to_edge
    from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer
    from torch.export import export

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(4, track_running_stats=False)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    net = exportable(torch.nn.Sequential(torch.nn.Sequential(bn)), channel_major)
    assert isinstance(net[0], CnhwSequential) == channel_major
    x = 3.0 + torch.randn(5, 4, 28, 28)  # an offset mean, as after a convolution with bias
    prog = to_edge(export(net, (x,), strict=False)).to_executorch()
    out = _load_for_executorch_from_buffer(prog.buffer).run_method("forward", (x,))[0]
    truth = F.batch_norm(x.double(), None, None, bn.weight.double(), bn.bias.double(), True)
    eager = (F.batch_norm(x, None, None, bn.weight, bn.bias, True).double() - truth).abs().max()
    assert (out.double() - truth).abs().max().item() <= 4 * max(eager.item(), 1e-7)


def write_episode(root, sx, sy, qx) -> tuple:
    support, query = root / "support", root / "query"
    for i, (img, lab) in enumerate(zip(sx, sy.tolist())):
        d = support / f"class{lab}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0] * 255).round().byte().numpy()).save(d / f"{i:03d}.png")
    query.mkdir()
    for j, img in enumerate(qx):
        Image.fromarray((img[0] * 255).round().byte().numpy()).save(query / f"{j:03d}.png")
    return support, query


def test_cli_export_executorch_and_adapt(tmp_path, capsys, monkeypatch) -> None:
    learner = learner_for("maml", True)
    mpz = save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner))
    pte = tmp_path / "m.pte"
    assert main(["export-executorch", str(mpz), "--out", str(pte), "--k-shot", str(K_SHOT),
                 "--max-queries", "8", "--delegate", "portable"]) == 0
    assert not any(delegated_methods(pte.read_bytes()).values())
    out = capsys.readouterr().out
    assert "ExecuTorch vs PyTorch runtime" in out and "same predicted classes" in out
    sx, sy, qx = episode()
    support, query = write_episode(tmp_path, sx, sy, qx)
    runs = {}
    for runtime, model in (("torch", mpz), ("executorch", pte)):
        assert main(["adapt", "--runtime", runtime, str(model), "--support", str(support),
                     "--query", str(query), "--json"]) == 0
        runs[runtime] = json.loads(capsys.readouterr().out)
    a, b = runs["torch"], runs["executorch"]
    assert a.keys() == b.keys() and a["classes"] == b["classes"] and a["adaptation"] == \
        b["adaptation"]
    assert [p["class"] for p in a["predictions"]] == [p["class"] for p in b["predictions"]]
    assert [p["file"] for p in a["predictions"]] == [p["file"] for p in b["predictions"]]
    assert np.allclose([p["probability"] for p in a["predictions"]],
                       [p["probability"] for p in b["predictions"]], atol=1e-4)
    # the text output has the same table
    assert main(["adapt", "--runtime", "executorch", str(pte), "--support", str(support),
                 "--query", str(query)]) == 0
    assert "masked SGD step(s)" in capsys.readouterr().out

    # bad input: each error (exit code 1, one line on stderr) names the file or flag
    def fails(argv: list[str], pattern: str) -> None:
        assert main(argv) != 0
        assert re.search(pattern, capsys.readouterr().err), pattern

    fails(["adapt", "--runtime", "executorch", str(mpz), "--support", str(support), "--query",
           str(query)], r"m\.mpz' is not an ExecuTorch program")
    fails(["adapt", str(pte), "--support", str(support), "--query", str(query)],
          r"m\.pte' is an ExecuTorch program.*--runtime executorch")
    fails(["export-executorch", str(pte), "--out", str(tmp_path / "x.pte")],
          r"m\.pte' is not a readable \.mpz")
    fails(["adapt", "--runtime", "executorch", str(pte), "--support", str(support), "--query",
           str(query), "--bn", "batch"], "--bn support only")
    one_shot = tmp_path / "one"
    for d in sorted(support.iterdir()):
        (one_shot / d.name).mkdir(parents=True)
        f = sorted(d.iterdir())[0]
        (one_shot / d.name / f.name).write_bytes(f.read_bytes())
    fails(["adapt", "--runtime", "executorch", str(pte), "--support", str(one_shot), "--query",
           str(query)], r"m\.pte' was exported for 5-way 2-shot.*--k-shot")
    # a program ExecuTorch cannot load: with an XNNPACK delegate in a runtime without the
    # backend, the error says how to export for such a runtime; otherwise it does not
    import metaprune.deploy.executorch_runtime as runtime_module

    cut = tmp_path / "cut.pte"
    cut.write_bytes(pte.read_bytes()[:4096] + b"XnnpackBackend")
    args = ["adapt", "--runtime", "executorch", str(cut), "--support", str(support), "--query",
            str(query)]
    fails(args, r"cut\.pte': ExecuTorch cannot load it(?!.*--delegate portable)")
    monkeypatch.setattr(runtime_module, "registered_backends", lambda: [])
    fails(args, r"cut\.pte': ExecuTorch cannot load it.*--delegate portable")
    cut.write_bytes(pte.read_bytes()[:4096])  # a portable program: not the backend's fault
    fails(args, r"cut\.pte': ExecuTorch cannot load it(?!.*--delegate portable)")
