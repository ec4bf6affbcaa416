"""Checkpoints: ``NAME.safetensors`` (weights, masks, learner extras, optimiser state) plus a
``NAME.json`` sidecar (architecture, learner, data, config, metrics, git commit).

Loading never unpickles. Both files are written atomically, the JSON last and carrying the
SHA-256 of the tensor file, so a crash between the two writes is detected on load.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .io import text_writer, write_temp
from .learners import Learner, build_learner
from .masks import Masks
from .models import build_model

FORMAT = "metaprune-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file."""


@dataclass
class Checkpoint:
    learner: Learner
    masks: Masks
    meta: dict = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.learner.model


@functools.cache
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``run/best`` or ``run/best.safetensors`` or ``run/best.json`` -> both file paths."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, learner: Learner, meta: dict | None = None,
                    with_optimizer: bool = True) -> Path:
    """Write the learner (model weights, masks, extras, optionally optimiser state)."""
    st_path, js_path = paths(path)
    tensors: dict[str, torch.Tensor] = {}
    for n, p in learner.model.named_parameters():
        tensors[f"model.{n}"] = p.detach()
    for n, b in learner.model.named_buffers():
        tensors[f"buffer.{n}"] = b.detach()
    for n, m in learner.masks.items():
        tensors[f"mask.{n}"] = m.to(torch.uint8)
    for n, t in learner.extra_state().items():
        tensors[f"learner.{n}"] = t.detach()
    opt_meta = None
    if with_optimizer and learner._optimizer is not None:
        sd = learner._optimizer.state_dict()
        for idx, state in sd["state"].items():
            for k, v in state.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{idx}.{k}"] = v.detach().reshape(v.shape)
        opt_meta = {"param_groups": sd["param_groups"], "type": type(learner._optimizer).__name__}
    tensors = {k: v.contiguous().cpu().clone() for k, v in tensors.items()}
    # both files are written and flushed first, then renamed back to back: a kill can no
    # longer fall between new weights and an old sidecar (which made the run unresumable)
    st_tmp = write_temp(st_path, lambda tmp: save_file(tensors, tmp))
    try:
        spec = getattr(learner.model, "model_spec", None)
        doc = {
            "format": FORMAT, "version": VERSION,
            "model": spec, "learner": learner.config(), "optimizer": opt_meta,
            "git_commit": git_commit(), "tensors_sha256": _sha256(Path(st_tmp)),
            **(meta or {}),
        }
        js_tmp = write_temp(js_path, text_writer(json.dumps(doc, indent=2, default=str)))
    except BaseException:
        os.unlink(st_tmp)
        raise
    os.replace(st_tmp, st_path)
    os.replace(js_tmp, js_path)
    return st_path


def read_meta(path: str | os.PathLike) -> dict:
    _, js_path = paths(path)
    try:
        doc = json.loads(js_path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint sidecar '{js_path}' does not exist") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint sidecar '{js_path}' is unreadable: {e}") from e
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"'{js_path}' is not a metaprune checkpoint (format="
                              f"{doc.get('format')!r})")
    return doc


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    device: str | torch.device = "cpu", with_optimizer: bool = True
                    ) -> Checkpoint:
    """Rebuild model (from the registry, unless ``model`` is given) and learner; restore
    weights, masks, learner extras and (optionally) the optimiser state."""
    st_path, js_path = paths(path)
    doc = read_meta(path)
    if not st_path.exists():
        raise CheckpointError(f"checkpoint tensors '{st_path}' do not exist")
    if doc.get("tensors_sha256") and doc["tensors_sha256"] != _sha256(st_path):
        raise CheckpointError(f"'{st_path}' does not match its sidecar '{js_path}' "
                              "(interrupted write or mixed files)")
    try:
        tensors = load_file(str(st_path), device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read '{st_path}': {e}") from e
    if model is None:
        spec = doc.get("model")
        if not spec:
            raise CheckpointError(f"'{js_path}' has no model spec: pass model= explicitly")
        model = build_model(spec["name"], **spec["kwargs"])
    model = model.to(device)
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    state.update({k[7:]: v for k, v in tensors.items() if k.startswith("buffer.")})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"'{st_path}' does not fit {type(model).__name__}: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}")
    lcfg = dict(doc["learner"])
    learner = build_learner(lcfg.pop("name"), model, **lcfg)
    learner.load_extra_state({k[8:]: v for k, v in tensors.items() if k.startswith("learner.")})
    masks = {k[5:]: v.float() for k, v in tensors.items() if k.startswith("mask.")}
    learner.set_masks(masks)
    if with_optimizer and doc.get("optimizer"):
        opt = learner.optimizer
        st: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                st.setdefault(int(idx), {})[key] = v
        opt.load_state_dict({"state": st, "param_groups": doc["optimizer"]["param_groups"]})
    meta = {k: v for k, v in doc.items() if k not in ("tensors_sha256",)}
    return Checkpoint(learner, learner.masks, meta)
