"""ONNX export of an adapted model: onnxruntime agrees with PyTorch (max abs diff <= 1e-4),
BatchNorm is frozen at support statistics (and folded), batch 1 is well defined."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metaprune.deploy.format import mpz_from_learner, save_mpz
from metaprune.deploy.onnx_export import export_onnx, onnx_class_names, onnx_max_abs_diff
from metaprune.deploy.runtime import DeviceModel
from metaprune.learners import build_learner
from metaprune.models import build_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")




def adapted(tmp_path, name: str = "maml", seed: int = 0):
    torch.manual_seed(seed)
    net = build_model("conv4", width=32)
    learner = build_learner(name, net, inner_lr=0.3, eval_inner_steps=3)
    g = torch.Generator().manual_seed(seed + 1)
    learner.set_masks({n: (torch.rand(p.shape, generator=g) >= 0.85).float()
                       for n, p in net.named_parameters() if p.dim() > 1})
    dm = DeviceModel.load(save_mpz(tmp_path / "m.mpz", mpz_from_learner(learner)))
    g = torch.Generator().manual_seed(5)
    sx = torch.rand(10, 1, 28, 28, generator=g)
    qx = torch.rand(12, 1, 28, 28, generator=g)
    sy = torch.arange(5).repeat_interleave(2)
    return dm.adapt(sx, sy, class_names=[f"c{i}" for i in range(5)]), sx, qx, learner.masks


@pytest.mark.parametrize("name", ["maml", "protonet"])
def test_onnxruntime_matches_pytorch(tmp_path, name: str) -> None:
    a, sx, qx, _ = adapted(tmp_path, name)
    path = export_onnx(a, tmp_path / "m.onnx", sx)
    assert onnx_max_abs_diff(path, a, qx) <= 1e-4
    assert onnx_max_abs_diff(path, a, qx[:1]) <= 1e-4     # batch 1 (dynamic batch axis)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probs = sess.run(None, {"images": qx.numpy()})
    one = np.concatenate([sess.run(None, {"images": qx[i:i + 1].numpy()})[0]
                          for i in range(len(qx))])
    assert np.abs(one - logits).max() <= 1e-4               # batch independent
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert onnx_class_names(path) == [f"c{i}" for i in range(5)]
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops and "ReduceMean" not in ops  # frozen and folded


def test_unfolded_export_and_sparsity_kept(tmp_path) -> None:
    a, sx, qx, masks = adapted(tmp_path)
    path = export_onnx(a, tmp_path / "m.onnx", sx, fold_bn=False)
    assert onnx_max_abs_diff(path, a, qx) <= 1e-4
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    # frozen statistics: no batch reductions (the exporter's optimiser folds BN itself)
    assert "ReduceMean" not in ops
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["metaprune.class_names"]) == [f"c{i}" for i in range(5)]
    # the pruned zeros are still zeros in the exported conv weights
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    n_zero = sum(int((v == 0).sum()) for v in inits.values() if v.ndim == 4)
    n_pruned = sum(int((m == 0).sum()) for n, m in masks.items() if m.dim() == 4)
    assert n_zero >= n_pruned


def test_export_onnx_cli(tmp_path, capsys) -> None:
    from metaprune.cli import main

    a, _, _, _ = adapted(tmp_path)  # writes tmp_path / "m.mpz"
    ep = tmp_path / "ep"
    assert main(["export-episode", "--n-way", "5", "--k-shot", "1", "--queries", "2",
                 "--seed", "4", "--out", str(ep)]) == 0
    out = tmp_path / "cli.onnx"
    assert main(["export-onnx", str(tmp_path / "m.mpz"), "--support", str(ep / "support"),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    classes = sorted(p.name for p in (ep / "support").iterdir())
    assert onnx_class_names(out) == classes
    diff = float(text.split("max |ONNX - PyTorch| = ")[1].split()[0])
    assert diff <= 1e-4
    # same predictions as the adapt command on the query images
    assert main(["adapt", str(tmp_path / "m.mpz"), "--support", str(ep / "support"),
                 "--query", str(ep / "query"), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    from metaprune.deploy.runtime import load_image

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.stack([load_image(p["file"], 1, 28) for p in preds]).astype(np.float32) / 255.0
    _, probs = sess.run(None, {"images": x})
    assert np.abs(probs - np.array([p["probabilities"] for p in preds])).max() <= 1e-4
