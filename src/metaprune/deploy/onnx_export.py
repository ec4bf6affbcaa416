"""ONNX export of an ADAPTED model, for inference on a device (onnxruntime, etc.).

What is exported is ``AdaptedModel.inference_module()``: the task's fast weights with every
BatchNorm frozen at the statistics of the support set (see ``runtime``), then, by default, each
BatchNorm folded into the convolution before it (``w' = w * g / sqrt(var + eps)``,
``b' = (b - mean) * g / sqrt(var + eps) + beta``; a pruned weight stays exactly 0). The graph
maps a (B, C, H, W) float batch in [0, 1] to ``logits`` and ``probabilities`` (B, N), each image
independently, with a dynamic batch dimension; batch 1 is well defined.

Why not export the backbone as it is: with ``track_running_stats=False`` the exporter keeps
batch statistics (ReduceMean/Sub/Mul ops around BatchNormalization), so the ONNX graph is as
transductive as the PyTorch module: its output for an image depends on the other images in the
batch, and batch 1 normalises each image with its own spatial statistics, which the adapted
weights were never trained with.

The class names, the adaptation kind and the BatchNorm mode are stored in the ONNX model's
``metadata_props`` so the file is self-describing.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .runtime import AdaptedModel


class _WithProbabilities(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, torch.softmax(logits, dim=1)


def inference_graph(adapted: AdaptedModel, fold_bn: bool = True) -> nn.Module:
    return _WithProbabilities(adapted.inference_module(fold_bn)).eval()


def export_onnx(adapted: AdaptedModel, out: str | os.PathLike, example: torch.Tensor,
                fold_bn: bool = True, opset: int = 18, metadata: dict | None = None,
                quiet: bool = True) -> Path:
    """Write the adapted model as ONNX to ``out``; ``example`` is an input batch (its batch
    dimension is exported as dynamic)."""
    import onnx

    out = Path(out)
    graph = inference_graph(adapted, fold_bn)
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = example[:2] if len(example) >= 2 else example.repeat(2, 1, 1, 1)
    sink = io.StringIO()
    ctx = contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    try:
        if quiet:
            logger.setLevel(logging.ERROR)
        with ctx, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(graph, (example,), dynamo=True, opset_version=opset,
                                     input_names=["images"],
                                     output_names=["logits", "probabilities"],
                                     dynamic_shapes=({0: batch},), verbose=False)
    except Exception as e:
        raise RuntimeError(f"ONNX export failed: {e}\n{sink.getvalue()[-2000:]}") from e
    finally:
        logger.setLevel(level)
    model = prog.model_proto
    props = {"metaprune.class_names": json.dumps(adapted.class_names),
             "metaprune.kind": adapted.kind,
             "metaprune.batchnorm": "support-statistics, folded" if fold_bn
             else "support-statistics",
             "metaprune.input": "float32 (B, C, H, W) in [0, 1]",
             **{f"metaprune.{k}": str(v) for k, v in (metadata or {}).items()}}
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save_model(model, str(tmp))
    os.replace(tmp, out)
    return out


def onnx_max_abs_diff(path: str | os.PathLike, adapted: AdaptedModel,
                      x: torch.Tensor) -> float:
    """Max |onnxruntime - PyTorch| over the logits and probabilities of ``x`` (the PyTorch
    reference is the runtime's own prediction path: BatchNorm frozen and folded)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probs = sess.run(None, {"images": x.numpy()})
    ref = adapted.logits(x)
    d1 = (torch.from_numpy(logits) - ref).abs().max().item()
    d2 = (torch.from_numpy(probs) - torch.softmax(ref, 1)).abs().max().item()
    return max(d1, d2)


def onnx_class_names(path: str | os.PathLike) -> list[str]:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props["metaprune.class_names"])
