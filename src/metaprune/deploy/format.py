"""The ``.mpz`` deployment format: one safetensors file, no pickle.

Layout (all little-endian):

* tensor ``values`` (float32, 1-D): for every entry of the layout, in order, its stored floats:
  a masked parameter stores only its kept entries (mask == 1, C order), a dense one all entries.
* tensor ``index`` (uint8, 1-D; absent if nothing is masked): the concatenated index streams of
  the masked parameters, each in the encoding that is smallest for that layer:

  - ``full``     every entry kept: no index bytes;
  - ``bitmask``  ``np.packbits`` of the flat mask (1 bit per weight);
  - ``delta8``   CSR-style gaps between kept entries (``gap = pos - prev - 1``) as uint8 with an
                 escape: a gap ``g`` is written as ``g // 255`` bytes 255 then ``g % 255``;
  - ``delta16``  the same with uint16 and 65535 (2 bytes per code).

* safetensors header metadata ``{"mpz": JSON}``: format/version, the architecture spec
  (``build_model(name, **kwargs)``), input preprocessing (channels, size), the class count,
  the learner's test-time rule (``kind`` "gradient" or "prototypes", steps, inner lr, the names
  of the adapting parameters, whether the lr is per weight) and the layout:
  ``[[name, shape, encoding, kept, index_bytes], ...]`` (encoding ``dense``: an unmasked
  tensor, all entries stored). Meta-SGD's per-weight learning rates
  are entries ``lr:NAME``; for a masked parameter they are stored at its kept entries only
  (encoding ``like``: the parameter's own mask is reused; a pruned weight never moves, so its
  learning rate carries no information).

Two tensors and one compact JSON keep the container overhead to a few hundred bytes.

Round trip: every kept value and every dense tensor is bit-exact, masks are exact; pruned
entries come back as +0.0 (export refuses a weight that is non-zero where its mask is 0).

This module imports only torch, numpy, safetensors and the stdlib: the device runtime uses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models import registry as _models  # noqa: F401  (all backbones, conv4-slim included)
from ..models.layers import FILM_SITE
from ..models.registry import build_on_meta

FORMAT = "metaprune-mpz"
VERSION = 2          # 2: the metadata carries ``content_sha256``, verified on load
ENCODINGS = ("dense", "full", "bitmask", "delta8", "delta16", "like")
LR_PREFIX = "lr:"
FILM_PREFIX = "film:"
MAX_CONTEXT = 4096          # CAVIA context size
RULE_KINDS = ("gradient", "prototypes", "context")
# Bounds checked before anything is allocated or run (a model file may come from anyone):
MAX_ELEMENTS = 1 << 27      # parameter entries in one model (512 MiB of float32)
MAX_STEPS = 10_000          # test-time adaptation steps stored in the rule
MAX_INPUT_SIZE = 4096       # input image side, pixels
MAX_CLASSES = 100_000


class FormatError(ValueError):
    """An .mpz file (or a model to export) that cannot be handled; the message names it."""


# ---- index encodings --------------------------------------------------------------------------
def _gaps(mask: np.ndarray) -> np.ndarray:
    pos = np.flatnonzero(mask)
    return np.diff(pos, prepend=-1) - 1


def _escaped(gaps: np.ndarray, esc: int, dtype: str) -> np.ndarray:
    """Gap ``g`` -> ``g // esc`` codes ``esc`` followed by ``g % esc``."""
    reps = gaps // esc
    out = np.full(int(reps.sum()) + len(gaps), esc, dtype=np.int64)
    ends = np.cumsum(reps + 1) - 1           # position of each gap's terminal code
    out[ends] = gaps % esc
    return out.astype(dtype)


def _unescape(codes: np.ndarray, esc: int, numel: int, where: str) -> np.ndarray:
    codes = codes.astype(np.int64)
    ends = np.flatnonzero(codes != esc)
    pos = np.cumsum(codes)[ends] + np.arange(len(ends))
    if len(pos) and (pos[-1] >= numel or (len(codes) and codes[-1] == esc)):
        raise FormatError(f"{where}: corrupt index stream")
    return pos


def encode_mask(mask: np.ndarray) -> tuple[str, bytes]:
    """Smallest encoding of a flat 0/1 mask: (encoding name, index bytes)."""
    m = mask.astype(bool).ravel()
    if m.all():
        return "full", b""
    gaps = _gaps(m)
    cands = {"bitmask": np.packbits(m).tobytes()}
    n8 = len(gaps) + int((gaps // 255).sum())
    n16 = 2 * (len(gaps) + int((gaps // 65535).sum()))
    if n8 < len(cands["bitmask"]):
        cands["delta8"] = _escaped(gaps, 255, "u1").tobytes()
    if n16 < len(cands["bitmask"]) and n16 < n8:
        cands["delta16"] = _escaped(gaps, 65535, "<u2").tobytes()
    enc = min(cands, key=lambda k: len(cands[k]))
    return enc, cands[enc]


def decode_mask(enc: str, data: bytes, numel: int, where: str = "mask") -> np.ndarray:
    """Inverse of ``encode_mask``: flat bool array of ``numel`` entries."""
    if enc == "full":
        return np.ones(numel, dtype=bool)
    if enc == "bitmask":
        if len(data) != (numel + 7) // 8:
            raise FormatError(f"{where}: bitmask has {len(data)} bytes, expected "
                              f"{(numel + 7) // 8}")
        return np.unpackbits(np.frombuffer(data, np.uint8), count=numel).astype(bool)
    if enc in ("delta8", "delta16"):
        esc, dt = (255, "u1") if enc == "delta8" else (65535, "<u2")
        pos = _unescape(np.frombuffer(data, dt), esc, numel, where)
        m = np.zeros(numel, dtype=bool)
        m[pos] = True
        return m
    raise FormatError(f"{where}: unknown index encoding '{enc}'")


# ---- the in-memory model ----------------------------------------------------------------------
@dataclass
class MPZ:
    """Everything a device needs: weights (pruned entries 0), masks, per-weight lrs, metadata."""

    meta: dict[str, Any]
    params: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)   # 0/1 float32
    lrs: dict[str, torch.Tensor] = field(default_factory=dict)     # Meta-SGD only
    film: dict[str, torch.Tensor] = field(default_factory=dict)    # CAVIA's FiLM generators

    @property
    def rule(self) -> dict[str, Any]:
        return self.meta["rule"]


def rule_of(learner: Any) -> dict[str, Any]:
    """The learner's test-time rule (duck-typed: this module must not import learners)."""
    cfg = learner.config()
    if "context_dim" in cfg:  # CAVIA: only a context vector adapts, through FiLM layers
        return {"learner": cfg["name"], "kind": "context",
                "steps": int(learner.eval_inner_steps), "inner_lr": float(learner.inner_lr),
                "per_weight_lr": False, "adapt": [], "context_dim": int(cfg["context_dim"]),
                "film_blocks": [int(b) for b in cfg["film_blocks"]],
                "film_site": cfg["film_site"]}
    per_weight = bool(learner.extra_state())
    kind = "prototypes" if learner.name == "protonet" else "gradient"
    return {"learner": cfg.get("name", learner.name), "kind": kind,
            "steps": int(learner.eval_inner_steps) if kind == "gradient" else 0,
            "inner_lr": float(learner.inner_lr), "per_weight_lr": per_weight,
            "adapt": list(learner.adapt_names) if kind == "gradient" else []}


def mpz_from_learner(learner: Any, masks: Mapping[str, torch.Tensor] | None = None,
                     extra_meta: dict | None = None) -> MPZ:
    """Collect a learner's weights, masks, per-weight lrs and test-time rule."""
    model = learner.model
    spec = getattr(model, "model_spec", None)
    if not spec:
        raise FormatError(f"{type(model).__name__} has no registry spec (build it with "
                          "metaprune.models.build_model) so a device could not rebuild it")
    cfg = dict(getattr(model, "config", {}))
    masks = dict(learner.masks if masks is None else masks)
    params = {n: p.detach().cpu() for n, p in model.named_parameters()}
    lrs, film = {}, {}
    for k, v in learner.extra_state().items():
        if k.startswith("film."):
            film[k[5:]] = v.detach().cpu()
            continue
        name = k[3:].replace("__", ".") if k.startswith("lr.") else None
        if name not in params:
            raise FormatError(f"learner state '{k}' is not a per-weight learning rate of a "
                              "model parameter: the format cannot store it")
        lrs[name] = v.detach().cpu()
    meta = {"model": spec, "n_way": cfg.get("n_way"),
            "input": {"channels": cfg.get("in_channels"), "size": cfg.get("image_size"),
                      "scale": 1 / 255, "resample": "lanczos"},
            "rule": rule_of(learner), **(extra_meta or {})}
    return MPZ(meta, params, {n: m.detach().cpu().float() for n, m in masks.items()}, lrs,
               film)


# ---- save / load ------------------------------------------------------------------------------
def _f32(name: str, t: torch.Tensor) -> np.ndarray:
    if t.dtype != torch.float32:
        raise FormatError(f"tensor '{name}' is {t.dtype}; the .mpz format stores float32 only")
    return t.detach().cpu().contiguous().numpy().ravel()


def save_mpz(path: str | os.PathLike, mpz: MPZ) -> Path:
    """Write ``mpz`` to ``path`` (atomically: a temporary file then rename)."""
    path = Path(path)
    values: list[np.ndarray] = []
    index: list[bytes] = []
    layout: list[list] = []
    unknown = (set(mpz.masks) | set(mpz.lrs)) - set(mpz.params)
    if unknown:
        raise FormatError(f"masks/lrs for unknown parameters {sorted(unknown)}")
    entries = [(n, p, False) for n, p in mpz.params.items()]
    entries += [(n, mpz.lrs[n], True) for n in mpz.params if n in mpz.lrs]
    for name, t in mpz.film.items():  # never masked: stored dense
        flat = _f32(name, t)
        values.append(flat)
        layout.append([FILM_PREFIX + name, list(t.shape), "dense", flat.size, 0])
    for name, t, is_lr in entries:
        flat = _f32(name, t)
        key = LR_PREFIX + name if is_lr else name
        if name not in mpz.masks:
            values.append(flat)
            layout.append([key, list(t.shape), "dense", flat.size, 0])
            continue
        m = mpz.masks[name].detach().cpu().numpy().ravel()
        if m.shape != flat.shape or not np.isin(m, (0, 1)).all():
            raise FormatError(f"mask of '{name}' must be 0/1 with the parameter's shape")
        keep = m.astype(bool)
        if not is_lr and np.any(flat[~keep] != 0):
            raise FormatError(f"parameter '{name}' is non-zero at {int((flat[~keep] != 0).sum())}"
                              " pruned positions: apply the masks before exporting")
        if is_lr:
            enc, data = "like", b""
        else:
            enc, data = encode_mask(keep)
        values.append(flat[keep])
        index.append(data)
        layout.append([key, list(t.shape), enc, int(keep.sum()), len(data)])
    flat_values = np.concatenate(values) if values else np.zeros(0, np.float32)
    blob = b"".join(index)
    meta = {"format": FORMAT, "version": VERSION, **mpz.meta, "layout": layout}
    meta["content_sha256"] = content_digest(meta, flat_values, blob)
    tensors = {"values": torch.from_numpy(flat_values)}
    if blob:
        tensors["index"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"mpz": json.dumps(meta, separators=(",", ":"))})
        os.replace(tmp, path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)  # safetensors creates 0600 files
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FormatError(f"cannot write '{path}': {e}") from e
    return path


def content_digest(meta: Mapping[str, Any], values: np.ndarray, index: bytes) -> str:
    """sha256 of the metadata (its own digest left out), the stored floats and the index."""
    doc = {k: v for k, v in meta.items() if k != "content_sha256"}
    h = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    h.update(np.ascontiguousarray(values, dtype="<f4").tobytes())
    h.update(index)
    return h.hexdigest()


def _int(value: Any, low: int, high: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormatError(f"{where} must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_rule(rule: Any, where: str) -> None:
    """A test-time adaptation rule (as :func:`rule_of` writes it), typed and bounded."""
    if not isinstance(rule, dict):
        raise FormatError(f"{where}: field 'rule' is missing or not a mapping")
    if rule.get("kind") not in RULE_KINDS:
        raise FormatError(f"{where}: rule.kind must be one of {RULE_KINDS}, got "
                          f"{rule.get('kind')!r}")
    if rule["kind"] == "context":
        _int(rule.get("context_dim"), 1, MAX_CONTEXT, f"{where}: rule.context_dim")
        blocks = rule.get("film_blocks")
        if not (isinstance(blocks, list) and blocks and all(
                isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 64 for b in blocks)):
            raise FormatError(f"{where}: rule.film_blocks must be a list of block indices, "
                              f"got {blocks!r}")
        if rule.get("film_site") != FILM_SITE:
            raise FormatError(f"{where}: rule.film_site must be {FILM_SITE!r} (CAVIA's "
                              f"conv - BatchNorm - pool - FiLM - ReLU), got "
                              f"{rule.get('film_site')!r}; a CAVIA model trained before FiLM "
                              f"sat there must be trained and exported again")
    _int(rule.get("steps"), 0, MAX_STEPS, f"{where}: rule.steps")
    lr = rule.get("inner_lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (
            math.isfinite(lr) and lr > 0):
        raise FormatError(f"{where}: rule.inner_lr must be a finite number > 0, got {lr!r}")
    if not isinstance(rule.get("per_weight_lr"), bool):
        raise FormatError(f"{where}: rule.per_weight_lr must be true or false")
    adapt = rule.get("adapt")
    if not (isinstance(adapt, list) and all(isinstance(a, str) for a in adapt)):
        raise FormatError(f"{where}: rule.adapt must be a list of parameter names")
    if not isinstance(rule.get("learner", ""), str):
        raise FormatError(f"{where}: rule.learner must be a string")


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """Every field the loader and the runtime use, typed and bounded (FormatError naming the
    file and the field otherwise)."""
    where = f"'{path}'"
    model = meta.get("model")
    if not (isinstance(model, dict) and isinstance(model.get("name"), str)
            and isinstance(model.get("kwargs"), dict)):
        raise FormatError(f"{where}: field 'model' must be {{name: str, kwargs: {{...}}}}, "
                          f"got {model!r}")
    check_rule(meta.get("rule"), where)
    inp = meta.get("input")
    if not isinstance(inp, dict):
        raise FormatError(f"{where}: field 'input' is missing or not a mapping")
    _int(inp.get("channels"), 1, 4, f"{where}: input.channels")
    _int(inp.get("size"), 1, MAX_INPUT_SIZE, f"{where}: input.size")
    if meta.get("n_way") is not None:
        _int(meta["n_way"], 1, MAX_CLASSES, f"{where}: n_way")
    layout = meta.get("layout")
    if not isinstance(layout, list):
        raise FormatError(f"{where}: field 'layout' must be a list")
    total = 0
    for i, entry in enumerate(layout):
        at = f"{where}: layout[{i}]"
        if not (isinstance(entry, list) and len(entry) == 5 and isinstance(entry[0], str)
                and isinstance(entry[1], list) and entry[2] in ENCODINGS):
            raise FormatError(f"{at} must be [name, shape, encoding, kept, index_bytes] with "
                              f"an encoding in {ENCODINGS}, got {entry!r}"[:300])
        numel = 1
        for d in entry[1]:
            numel *= _int(d, 0, MAX_ELEMENTS, f"{at} ('{entry[0]}') shape")
        total += numel
        if total > MAX_ELEMENTS:
            raise FormatError(f"{where}: the layout declares more than {MAX_ELEMENTS:,} "
                              "parameter entries (the limit of this runtime)")
        _int(entry[3], 0, numel, f"{at} ('{entry[0]}') kept")
        _int(entry[4], 0, MAX_ELEMENTS, f"{at} ('{entry[0]}') index_bytes")


def _check_model_size(meta: dict[str, Any], path: Path) -> None:
    """The declared architecture, built without memory (meta device), must have exactly the
    parameters the layout stores: a file cannot make the runtime allocate more than it holds."""
    spec = meta["model"]
    try:
        shapes = {n: tuple(p.shape) for n, p in build_on_meta(
            spec["name"], spec["kwargs"], f"'{path}'").named_parameters()}
    except (ValueError, TypeError, RuntimeError) as e:
        raise FormatError(f"'{path}': model {spec['name']!r} cannot be built from "
                          f"{spec['kwargs']!r}: {e}"[:400]) from None
    stored = {e[0]: tuple(e[1]) for e in meta["layout"]
              if not e[0].startswith((LR_PREFIX, FILM_PREFIX))}
    if stored != shapes:
        bad = sorted(set(stored) ^ set(shapes)) or sorted(
            n for n in shapes if stored[n] != shapes[n])
        raise FormatError(f"'{path}': the stored tensors do not fit model {spec['name']!r} "
                          f"{spec['kwargs']!r} (first differences: {bad[:3]})")


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of an .mpz file (layout included) without reading the tensors."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"model file '{path}' does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("mpz")
    except Exception as e:  # safetensors raises its own error types
        raise FormatError(f"'{path}' is not a readable .mpz (safetensors) file: {e}") from e
    try:
        meta = json.loads(raw) if raw else {}
    except json.JSONDecodeError as e:
        raise FormatError(f"'{path}': corrupt metadata: {e}") from e
    if meta.get("format") != FORMAT:
        raise FormatError(f"'{path}' is not a metaprune .mpz model (format="
                          f"{meta.get('format')!r})")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
        raise FormatError(f"'{path}' has format version {version!r}; this metaprune "
                          f"reads up to {VERSION}")
    _check_meta(meta, path)
    return meta


def load_mpz(path: str | os.PathLike) -> MPZ:
    """Read an .mpz file back into weights (pruned entries 0), masks and lrs."""
    path = Path(path)
    meta = read_meta(path)
    _check_model_size(meta, path)
    try:
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
            values = (f.get_tensor("values").numpy() if "values" in keys
                      else np.zeros(0, np.float32))
            index = f.get_tensor("index").numpy().tobytes() if "index" in keys else b""
    except Exception as e:  # safetensors raises its own error types
        raise FormatError(f"'{path}' is not a readable .mpz (safetensors) file: {e}") from e
    if values.dtype != np.float32 or values.ndim != 1:
        raise FormatError(f"'{path}': tensor 'values' must be 1-D float32")
    if meta["version"] >= 2 and meta.get("content_sha256") != content_digest(meta, values, index):
        raise FormatError(f"'{path}' is damaged: its contents do not match the digest it "
                          "records (content_sha256)")
    if not np.isfinite(values).all():
        raise FormatError(f"'{path}': stored weights hold NaN or inf (a diverged model)")
    params: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    lrs: dict[str, torch.Tensor] = {}
    film: dict[str, torch.Tensor] = {}
    keep_of: dict[str, np.ndarray] = {}
    vo = io = 0
    for key, shape, enc, kept, nbytes in meta.pop("layout"):
        where = f"'{path}', tensor '{key}'"
        numel = math.prod(shape)
        name = key[len(LR_PREFIX):] if key.startswith(LR_PREFIX) else key
        if vo + kept > len(values):
            raise FormatError(f"{where}: the file is truncated (values end at {len(values)})")
        if enc == "dense":
            if kept != numel:
                raise FormatError(f"{where}: dense tensor with {kept} of {numel} values")
            flat = values[vo:vo + numel]
            keep = None
        else:
            if enc == "like":
                if name not in keep_of:
                    raise FormatError(f"{where}: no mask to reuse")
                keep = keep_of[name]
            else:
                keep = decode_mask(enc, index[io:io + nbytes], numel, where)
                io += nbytes
            if int(keep.sum()) != kept:
                raise FormatError(f"{where}: mask keeps {int(keep.sum())} entries, layout "
                                  f"says {kept}")
            flat = np.zeros(numel, np.float32)
            flat[keep] = values[vo:vo + kept]
        vo += kept
        t = torch.from_numpy(flat.copy()).reshape(shape)
        if key.startswith(FILM_PREFIX):
            if keep is not None:
                raise FormatError(f"{where}: FiLM tensors are stored dense")
            film[key[len(FILM_PREFIX):]] = t
        elif key.startswith(LR_PREFIX):
            lrs[name] = t
        else:
            params[name] = t
            if keep is not None:
                keep_of[name] = keep
                masks[name] = torch.from_numpy(keep.astype(np.float32)).reshape(shape)
    if vo != len(values) or io != len(index):
        raise FormatError(f"'{path}': layout does not account for all stored bytes")
    return MPZ(meta, params, masks, lrs, film)


# ---- sizes ------------------------------------------------------------------------------------
@dataclass
class SizeReport:
    dense_bytes: int        # float32 of every parameter entry (and every per-weight lr)
    compact_bytes: int      # the .mpz file on disk, header and metadata included
    limit_bytes: int        # 4 x stored floats (unpruned entries) + 1 bit per prunable weight
    prunable: int
    kept: int

    @property
    def ratio(self) -> float:
        return self.compact_bytes / self.limit_bytes

    def lines(self) -> list[str]:
        return [f"dense bytes:        {self.dense_bytes:>10,}",
                f"compact bytes:      {self.compact_bytes:>10,}  " + (
                    f"({self.dense_bytes / self.compact_bytes:.2f}x smaller than dense)"
                    if self.compact_bytes < self.dense_bytes else
                    f"({self.compact_bytes - self.dense_bytes:,} B of header and metadata)"),
                f"information limit:  {self.limit_bytes:>10,}  (non-zeros x 4 B + 1 bit per "
                "prunable weight)",
                f"compact / limit:    {self.ratio:>10.3f}",
                f"prunable weights:   {self.prunable:>10,}  kept {self.kept:,} "
                f"({100 * (1 - self.kept / self.prunable):.1f}% pruned)" if self.prunable
                else "prunable weights:            0  (no masks: a dense model)"]


def size_report(path: str | os.PathLike, mpz: MPZ | None = None) -> SizeReport:
    """Dense bytes, compact bytes and the information limit of a written .mpz file."""
    mpz = load_mpz(path) if mpz is None else mpz
    tensors = list(mpz.params.items()) + list(mpz.lrs.items())
    dense = 4 * sum(t.numel() for _, t in tensors)
    stored = sum(int(mpz.masks[n].sum()) if n in mpz.masks else t.numel() for n, t in tensors)
    prunable = sum(m.numel() for m in mpz.masks.values())
    kept = sum(int(m.sum()) for m in mpz.masks.values())
    limit = 4 * stored + (prunable + 7) // 8
    return SizeReport(dense, os.path.getsize(path), limit, prunable, kept)
