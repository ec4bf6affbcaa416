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
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from .finite import require_finite
from .io import sha256_file, text_writer, with_extension, write_temp
from .learners import Learner, build_learner
from .masks import Masks
from .models import build_model
from .models.registry import build_on_meta

FORMAT = "metaprune-checkpoint"
VERSION = 1
MAX_STEPS = 10_000  # adaptation steps a checkpoint may declare


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
    return with_extension(p, ".safetensors"), with_extension(p, ".json")


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
    sd = learner.optimizer_state() if with_optimizer else None
    if sd is not None:
        for idx, state in sd["state"].items():
            for k, v in state.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{idx}.{k}"] = v.detach().reshape(v.shape)
        opt_meta = {"param_groups": sd["param_groups"], "type": type(learner.optimizer).__name__}
    tensors = {k: v.contiguous().cpu().clone() for k, v in tensors.items()}
    # Commit protocol: both files are written and flushed under temporary names, then renamed
    # tensors first, sidecar second. A kill between the two renames leaves new tensors, the
    # old sidecar and the new sidecar's temporary file, which read_meta() completes (roll
    # forward); a kill before the first rename leaves the old pair intact.
    _complete_commit(st_path, js_path)
    _remove_stale_temps(st_path, js_path)
    st_tmp = write_temp(st_path, lambda tmp: save_file(tensors, tmp))
    try:
        spec = getattr(learner.model, "model_spec", None)
        doc = {
            "format": FORMAT, "version": VERSION,
            "model": spec, "learner": learner.config(), "optimizer": opt_meta,
            "git_commit": git_commit(), "tensors_sha256": sha256_file(st_tmp),
            **(meta or {}),
        }
        js_tmp = write_temp(js_path, text_writer(json.dumps(doc, indent=2, default=str)))
    except BaseException:
        os.unlink(st_tmp)
        raise
    os.replace(st_tmp, st_path)
    try:
        os.replace(js_tmp, js_path)
    except FileNotFoundError:  # a reader completed this save already (see _complete_commit)
        if json.loads(js_path.read_text()).get("tensors_sha256") != doc["tensors_sha256"]:
            raise
    return st_path


def _temps(path: Path) -> list[Path]:
    """Temporary files that write_temp() made for ``path`` (see io.write_temp)."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def _remove_stale_temps(st_path: Path, js_path: Path) -> None:
    for tmp in _temps(st_path) + _temps(js_path):
        tmp.unlink(missing_ok=True)


def _complete_commit(st_path: Path, js_path: Path) -> None:
    """Roll forward a save_checkpoint() killed between its two renames: a sidecar temporary
    whose digest matches the tensors file becomes the sidecar."""
    pending = _temps(js_path)
    if not pending or not st_path.exists():
        return
    digest = sha256_file(st_path)
    for tmp in pending:
        try:
            if json.loads(tmp.read_text()).get("tensors_sha256") == digest:
                os.replace(tmp, js_path)
                return
        except (OSError, ValueError):  # another rank completed it, or a half-written temp
            continue


def read_meta(path: str | os.PathLike) -> dict:
    """The sidecar of a checkpoint (completing an interrupted save first)."""
    st_path, js_path = paths(path)
    _complete_commit(st_path, js_path)
    try:
        doc = json.loads(js_path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint sidecar '{js_path}' does not exist") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint sidecar '{js_path}' is unreadable: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"'{js_path}' is not a metaprune checkpoint (format="
                              f"{doc.get('format') if isinstance(doc, dict) else None!r})")
    return doc


def read_tensors(path: str | os.PathLike, device: str | torch.device = "cpu"
                 ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Sidecar and tensors of a checkpoint, verified: the tensors file must match the digest
    its sidecar records (mandatory) and hold only finite numbers."""
    st_path, js_path = paths(path)
    doc = read_meta(path)
    if not st_path.exists():
        raise CheckpointError(f"checkpoint tensors '{st_path}' do not exist")
    if not isinstance(doc.get("tensors_sha256"), str):
        raise CheckpointError(f"'{js_path}' records no tensors_sha256: not written by "
                              "metaprune, or damaged")
    data = st_path.read_bytes()  # hashed and loaded from the same bytes
    if doc["tensors_sha256"] != hashlib.sha256(data).hexdigest():
        raise CheckpointError(f"'{st_path}' does not match its sidecar '{js_path}' "
                              "(damaged or mixed files)")
    try:
        tensors = {k: v.to(device) for k, v in load_safetensors(data).items()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read '{st_path}': {e}") from e
    require_finite(tensors, f"checkpoint '{st_path}'")
    return doc, tensors


def _optimizer_state(doc: dict, tensors: dict[str, torch.Tensor], where: Path
                     ) -> dict | None:
    opt = doc.get("optimizer")
    if not opt:
        return None
    if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)):
        raise CheckpointError(f"'{where}': field 'optimizer' must hold 'param_groups'")
    st: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            if not idx.isdigit():
                raise CheckpointError(f"'{where}': bad optimiser tensor name '{k}'")
            st.setdefault(int(idx), {})[key] = v
    return {"state": st, "param_groups": opt["param_groups"]}


def _spec(doc: dict, field: str, where: Path) -> tuple[str, dict]:
    """``doc[field]`` as (name, keyword arguments): {"name": ..., "kwargs": {...}} for the
    model, {"name": ..., **kwargs} for the learner."""
    spec = doc.get(field)
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)):
        raise CheckpointError(f"'{where}': field '{field}' must be a mapping with a 'name', "
                              f"got {spec!r}"[:300])
    kwargs = spec.get("kwargs", {}) if field == "model" else {
        k: v for k, v in spec.items() if k != "name"}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"'{where}': field '{field}.kwargs' must be a mapping")
    for key in ("inner_steps", "eval_inner_steps"):  # bounded: evaluate must end
        steps = kwargs.get(key)
        if steps is not None and not (isinstance(steps, int) and 0 <= steps <= MAX_STEPS):
            raise CheckpointError(f"'{where}': {field}.{key} must be an integer in "
                                  f"[0, {MAX_STEPS}], got {steps!r}")
    return spec["name"], kwargs


def check_saved_learner(learner: Learner, doc: dict, where: str) -> None:
    """Refuse a checkpoint whose recorded learner config lacks, or differs in, a key that
    defines what ``learner`` computes (``Learner.required_keys``, e.g. CAVIA's film_site)."""
    saved = doc.get("learner") if isinstance(doc.get("learner"), dict) else {}
    current = learner.config()
    for key in learner.required_keys:
        if saved.get(key) != current[key]:
            raise CheckpointError(
                f"{where}: learner.{key} is {saved.get(key)!r}, but {learner.name} now computes "
                f"with {current[key]!r}: the checkpoint comes from an earlier metaprune whose "
                f"{learner.name} computed differently; train it again")


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    device: str | torch.device = "cpu", with_optimizer: bool = True
                    ) -> Checkpoint:
    """Rebuild model (from the registry, unless ``model`` is given) and learner; restore
    weights, masks, learner extras and (optionally) the optimiser state."""
    st_path, js_path = paths(path)
    doc, tensors = read_tensors(path, device)
    learner_name, learner_kwargs = _spec(doc, "learner", js_path)
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    state.update({k[7:]: v for k, v in tensors.items() if k.startswith("buffer.")})
    try:
        if model is None:
            if not doc.get("model"):
                raise CheckpointError(f"'{js_path}' has no model spec: pass model= explicitly")
            name, kwargs = _spec(doc, "model", js_path)
            shapes = {k: tuple(v.shape) for k, v in
                      build_on_meta(name, kwargs, f"'{js_path}'").state_dict().items()}
            if shapes != {k: tuple(v.shape) for k, v in state.items()}:
                raise CheckpointError(f"'{st_path}' does not fit the model its sidecar "
                                      f"declares ({name} {kwargs})"[:300])
            model = build_model(name, **kwargs)
        model = model.to(device)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"'{st_path}' does not fit {type(model).__name__}: missing "
                                  f"{missing[:5]}, unexpected {unexpected[:5]}")
        learner = build_learner(learner_name, model, **learner_kwargs)
        check_saved_learner(learner, doc, f"'{js_path}'")
        learner.load_extra_state({k[8:]: v for k, v in tensors.items()
                                  if k.startswith("learner.")})
        learner.set_masks({k[5:]: v.float() for k, v in tensors.items()
                           if k.startswith("mask.")})
        if with_optimizer:
            learner.load_optimizer_state(_optimizer_state(doc, tensors, js_path))
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"'{js_path}': cannot rebuild the model, learner, masks or "
                              f"optimiser it describes: {e}"[:500]) from None
    meta = {k: v for k, v in doc.items() if k not in ("tensors_sha256",)}
    return Checkpoint(learner, learner.masks, meta)


def restore_checkpoint(learner: Learner, path: str | os.PathLike) -> dict:
    """Load weights, buffers, masks, learner extras and optimiser state of a checkpoint into an
    EXISTING learner (works for user models/learners that the registries do not know)."""
    dev = next(learner.model.parameters()).device
    doc, tensors = read_tensors(path, dev)
    check_saved_learner(learner, doc, f"'{paths(path)[1]}'")
    for n, p in learner.model.named_parameters():  # checked before anything is overwritten
        t = tensors.get(f"model.{n}")
        if t is None or t.shape != p.shape:
            raise CheckpointError(f"'{paths(path)[0]}' does not fit this model: parameter "
                                  f"'{n}' is {None if t is None else tuple(t.shape)}, the "
                                  f"model's {tuple(p.shape)}")
    with torch.no_grad():
        for n, p in learner.model.named_parameters():
            p.copy_(tensors[f"model.{n}"])
        for n, b in learner.model.named_buffers():
            if f"buffer.{n}" in tensors:
                b.copy_(tensors[f"buffer.{n}"])
    learner.load_extra_state({k[8:]: v for k, v in tensors.items() if k.startswith("learner.")})
    learner.reset_optimizer()
    learner.set_masks({k[5:]: v.float() for k, v in tensors.items() if k.startswith("mask.")})
    learner.load_optimizer_state(_optimizer_state(doc, tensors, paths(path)[1]))
    return doc
