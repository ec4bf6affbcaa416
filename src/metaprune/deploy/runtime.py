"""The device runtime: load an ``.mpz`` model, adapt it on a user's support images with the
stored test-time rule, predict query images.

Dependencies: torch, numpy, Pillow, the stdlib, ``metaprune.models`` (the architectures),
``metaprune.deploy.format``, ``metaprune.finite`` (the NaN guard) and ``metaprune.images``
(image reading); nothing from the training stack (learners, training, pruning, evaluation),
no plotting or progress bars. A test enforces this.

Adaptation is the library's masked inner loop re-implemented in a few lines:
``theta <- theta - lr * (grad * mask)`` for the adapting parameters, ``steps`` times, on the
cross-entropy of the support set (per-weight lrs for Meta-SGD); ProtoNet computes class
prototypes instead. Pruned weights stay exactly 0 (the update is masked and the result
re-masked).

BatchNorm. The backbones use BatchNorm with ``track_running_stats=False``: every forward pass
normalises with the statistics of its own batch. During adaptation that is what the library
does (support-batch statistics) and the runtime does the same. For prediction the library
normalises the whole query batch together (transductive); on a device that is ill defined:
an image's prediction depends on which other images share its batch, and a single image is
normalised with its own per-image spatial statistics (instance normalisation), which the
adapted weights never saw (a layer with a 1x1 map would even output its bias for any image).
The runtime therefore freezes, after adaptation, each BatchNorm layer's statistics computed on
the support set with the adapted weights (the statistics the adapted weights were trained
with) and predicts every image independently with them (``bn="support"``, the default).
``bn="batch"`` reproduces the library's transductive query-batch evaluation. The frozen module
(``AdaptedModel.inference_module``) is what the ONNX export writes, so PyTorch and ONNX agree
and batch-1 inference is well defined. Frozen, each BatchNorm after a convolution is an affine
map of its channels and is folded into that convolution's weights and bias (``fold_batchnorm``):
batch-1 latency on a small network is mostly per-layer cost, so prediction runs a layer less per
convolution (``benchmarks/device_report.py`` times both).
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import functional_call

from ..finite import NonFiniteError, non_finite
from ..images import IMAGE_SUFFIXES, read_image
from ..models import build_model
from ..models.layers import Embedding, add_film_hooks, block_channels, film_parameters, insert_film
from .format import MPZ, check_rule, load_mpz

BN_MODES = ("support", "batch")


# ---- images -----------------------------------------------------------------------------------
def load_image(path: str | os.PathLike, channels: int, size: int) -> np.ndarray:
    """One image file -> uint8 (C, H, W): grey or RGB, resized (Lanczos) to size x size; the
    same preprocessing as the training data loaders (:mod:`metaprune.images`)."""
    return read_image(path, channels, size)


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).float().div_(255.0)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class Support:
    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str]
    files: list[Path]


def load_support(folder: str | os.PathLike, channels: int, size: int) -> Support:
    """``folder/<class name>/<image>``: one sub-folder per class (sorted by name = label order)."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"support folder '{root}' does not exist")
    names, imgs, labels, files = [], [], [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        found = _images_in(d)
        if not found:
            raise ValueError(f"support class folder '{d}' has no images "
                             f"({', '.join(IMAGE_SUFFIXES)})")
        for f in found:
            imgs.append(load_image(f, channels, size))
            labels.append(len(names))
            files.append(f)
        names.append(d.name)
    if len(names) < 2:
        raise ValueError(f"support folder '{root}' needs at least 2 class sub-folders with "
                         f"images, found {len(names)}")
    return Support(to_tensor(imgs), torch.tensor(labels), names, files)


def query_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Query arguments (image files and/or folders of images) -> image files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = _images_in(p)
            if not found:
                raise ValueError(f"query folder '{p}' has no images")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"query '{p}' does not exist")
    if not out:
        raise ValueError("no query images given")
    return out


@contextlib.contextmanager
def film_applied(model: nn.Module, film: dict[int, tuple[torch.Tensor, torch.Tensor]]
                 ) -> Iterator[None]:
    """Within the block, ``model``'s blocks listed in ``film`` are FiLMed with the given
    (gamma, beta); nothing changes for an empty ``film``."""
    handles = add_film_hooks(model, list(film), lambda b, _out: film[b])
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ---- the adapted model ------------------------------------------------------------------------
class PrototypeClassifier(nn.Module):
    """Embedding + negative squared Euclidean distance to fixed class prototypes."""

    def __init__(self, model: nn.Module, prototypes: torch.Tensor):
        super().__init__()
        self.embed = Embedding(model)
        self.register_buffer("prototypes", prototypes.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        return -(z[:, None, :] - self.prototypes[None]).pow(2).sum(-1)


def freeze_batchnorm(model: nn.Module, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]
                     ) -> nn.Module:
    """Replace every BatchNorm (in place) by an eval-mode copy normalising with fixed
    ``stats[name] = (mean, biased var)``."""
    for name, (mean, var) in stats.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        new = type(old)(old.num_features, eps=old.eps, affine=old.affine,
                        track_running_stats=True)
        with torch.no_grad():
            if old.affine:
                new.weight.copy_(old.weight)
                new.bias.copy_(old.bias)
            new.running_mean.copy_(mean)
            new.running_var.copy_(var)
        setattr(parent, child, new.eval())
    return model


class _LayerTracer(fx.Tracer):
    """torch.fx tracer that keeps every module without children as one call (a layer's own
    forward, e.g. MaxPool2's CPU fast path, runs as written)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not list(m.children()) or super().is_leaf_module(m, qualname)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of eval-mode ``module`` with every frozen (running-statistics) BatchNorm that only
    reads a Conv2d's (or a Linear's) output folded into that layer (``w' = w * g / sqrt(var +
    eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``; a pruned weight stays exactly 0),
    found by tracing with torch.fx. ``module`` itself, with a warning, when it has forward hooks
    (tracing would drop them) or torch.fx cannot trace it (data-dependent control flow): the
    same predictions, only slower."""
    from torch.fx.experimental.optimization import fuse

    why = None
    if any(m._forward_hooks or m._forward_pre_hooks for m in module.modules()):
        why = "it has forward hooks"
    else:
        try:
            graph = fx.GraphModule(module, _LayerTracer().trace(module))
            return fuse(graph, inplace=False, no_trace=True)
        except (fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError) as e:
            why = f"torch.fx cannot trace it ({type(e).__name__}: {e})"
    warnings.warn(f"BatchNorm left unfolded in {type(module).__name__}: {why}", stacklevel=2)
    return module


def _batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}


@dataclass
class Prediction:
    file: str
    label: int
    class_name: str
    probability: float
    probabilities: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"file": self.file, "class": self.class_name, "label": self.label,
                "probability": self.probability, "probabilities": self.probabilities}


class AdaptedModel:
    """Fast weights (or prototypes) for one task, plus BatchNorm statistics of its support set."""

    def __init__(self, base: nn.Module, params: dict[str, torch.Tensor], kind: str,
                 class_names: list[str], bn_stats: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 prototypes: torch.Tensor | None = None,
                 film: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.base, self.params, self.kind = base, params, kind
        self.class_names, self.bn_stats, self.prototypes = class_names, bn_stats, prototypes
        self.film = film or {}  # CAVIA: the adapted context's (gamma, beta) per block
        self._inference: dict[bool, nn.Module] = {}  # inference modules by fold_bn

    def inference_module(self, fold_bn: bool = True) -> nn.Module:
        """A stand-alone eval-mode module: adapted weights, BatchNorm frozen at the support
        statistics; maps (B, C, H, W) images to (B, N) logits, each image independently.
        ``fold_bn``: each frozen BatchNorm right after a convolution is folded into it
        (:func:`fold_batchnorm`: the same function, fewer layers to run)."""
        if fold_bn not in self._inference:
            model = copy.deepcopy(self.base)
            model.load_state_dict(self.params, strict=False)
            freeze_batchnorm(model, self.bn_stats)
            insert_film(model, self.film)  # the task's FiLM as a layer, not a hook
            if self.kind == "prototypes":
                model = PrototypeClassifier(model, self.prototypes)
            model.eval().requires_grad_(False)
            self._inference[fold_bn] = fold_batchnorm(model) if fold_bn else model
        return self._inference[fold_bn]

    @torch.no_grad()
    def logits(self, x: torch.Tensor, bn: str = "support") -> torch.Tensor:
        if bn == "support":
            return self.inference_module()(x)
        if bn != "batch":
            raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
        if self.kind == "prototypes":  # as the library: query-batch statistics, cdist
            z = functional_call(Embedding(self.base), {f"m.{n}": p for n, p in self.params.items()},
                                (x,))
            return -torch.cdist(z, self.prototypes).pow(2)
        with film_applied(self.base, self.film):
            return functional_call(self.base, self.params, (x,))

    def predict(self, x: torch.Tensor, files: Sequence[str | os.PathLike] | None = None,
                bn: str = "support") -> list[Prediction]:
        probs = torch.softmax(self.logits(x, bn), dim=1)
        files = [str(f) for f in files] if files is not None else [str(i) for i in range(len(x))]
        out = []
        for f, p in zip(files, probs, strict=True):
            k = int(p.argmax())
            out.append(Prediction(f, k, self.class_names[k], float(p[k]),
                                  [round(float(v), 6) for v in p]))
        return out


class ImageInputs:
    """Support folders and query images read at a model's stored input size; shared by the
    PyTorch runtime (``DeviceModel``) and the ExecuTorch one."""

    source: str
    channels: int | None
    size: int | None

    def load_support(self, folder: str | os.PathLike) -> Support:
        if not self.channels or not self.size:
            raise ValueError(f"'{self.source}' stores no input size/channels")
        return load_support(folder, self.channels, self.size)

    def load_queries(self, paths: Sequence[str | os.PathLike]) -> tuple[torch.Tensor, list[Path]]:
        files = query_files(paths)
        return to_tensor([load_image(f, self.channels, self.size) for f in files]), files


class DeviceModel(ImageInputs):
    """A loaded ``.mpz``: architecture, weights (pruned entries 0), masks and test-time rule."""

    def __init__(self, mpz: MPZ, source: str = "<memory>"):
        self.mpz, self.meta, self.source = mpz, mpz.meta, source
        spec = self.meta["model"]
        self.model = build_model(spec["name"], **spec["kwargs"])
        missing, unexpected = self.model.load_state_dict(mpz.params, strict=False)
        if missing or unexpected:
            raise ValueError(f"'{source}' does not fit model '{spec['name']}': missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
        self.model.requires_grad_(False)
        check_rule(self.meta.get("rule"), f"'{source}'")
        self.rule = dict(self.meta["rule"])
        self.masks = {n: m.bool() for n, m in mpz.masks.items()}
        inp = self.meta.get("input") or {}
        self.channels, self.size = inp.get("channels"), inp.get("size")
        if self.rule["kind"] == "context":
            self._check_film()
        params = dict(self.model.named_parameters())
        for n in self.rule["adapt"]:  # the rule must fit the stored tensors
            if n not in params:
                raise ValueError(f"'{source}': rule.adapt names '{n}', which the model does "
                                 "not have")
            lr = mpz.lrs.get(n)
            if self.rule["per_weight_lr"] and (lr is None or lr.shape != params[n].shape):
                raise ValueError(f"'{source}': per-weight learning rates of '{n}' missing or "
                                 f"not of its shape {tuple(params[n].shape)}")

    def _check_film(self) -> None:
        """CAVIA: a FiLM generator (2C x context, 2C) for every listed block of C channels."""
        blocks = getattr(self.model, "features", None)
        dim = self.rule["context_dim"]
        for b in self.rule["film_blocks"]:
            if not isinstance(blocks, nn.Sequential) or b >= len(blocks):
                raise ValueError(f"'{self.source}': rule.film_blocks names block {b}, which "
                                 "the model does not have")
            c = block_channels(blocks[b])
            w, bias = self.mpz.film.get(f"b{b}_weight"), self.mpz.film.get(f"b{b}_bias")
            if w is None or bias is None or tuple(w.shape) != (2 * c, dim) or tuple(
                    bias.shape) != (2 * c,):
                raise ValueError(f"'{self.source}': FiLM generator of block {b} missing or "
                                 f"not of shape ({2 * c}, {dim}) + ({2 * c},)")

    def film_of(self, context: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """CAVIA: (gamma, beta) of every FiLM block for a context vector."""
        return {b: film_parameters(context, self.mpz.film[f"b{b}_weight"],
                                   self.mpz.film[f"b{b}_bias"])
                for b in self.rule["film_blocks"]}

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeviceModel:
        return cls(load_mpz(path), str(path))

    def lr_for(self, name: str) -> torch.Tensor | float:
        return self.mpz.lrs[name] if self.rule.get("per_weight_lr") else self.rule["inner_lr"]

    def adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int | None = None,
              class_names: Sequence[str] | None = None) -> AdaptedModel:
        """Adapt on a support set (labels 0..N-1) with the stored rule."""
        n_cls = int(y.max()) + 1
        names = list(class_names) if class_names is not None else [str(i) for i in range(n_cls)]
        params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        if self.rule["kind"] == "prototypes":
            embed = Embedding(self.model)
            stats = self._bn_stats(embed, {f"m.{n}": p for n, p in params.items()}, x, "m.")
            with torch.no_grad():
                z = functional_call(embed, {f"m.{n}": p for n, p in params.items()}, (x,))
                protos = torch.stack([z[y == c].mean(0) for c in range(n_cls)])
            return AdaptedModel(self.model, params, "prototypes", names, stats, protos)
        if self.rule["kind"] == "context":
            return self._adapt_context(x, y, steps, names)
        n_way = self.meta.get("n_way")
        if n_way is not None and n_cls != n_way:
            raise ValueError(f"the support set has {n_cls} classes but '{self.source}' was "
                             f"meta-trained for {n_way}-way tasks")
        steps = int(self.rule["steps"] if steps is None else steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        adapt = list(self.rule["adapt"])
        for _ in range(steps if adapt else 0):
            for n in adapt:
                params[n].requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(functional_call(self.model, params, (x,)), y)
                grads = torch.autograd.grad(loss, [params[n] for n in adapt])
            with torch.no_grad():
                for n, g in zip(adapt, grads, strict=True):
                    keep = self.masks.get(n)
                    if keep is not None:
                        g = torch.where(keep, g, 0.0)
                    new = params[n] - self.lr_for(n) * g
                    params[n] = torch.where(keep, new, 0.0) if keep is not None else new
        params = {n: p.detach() for n, p in params.items()}
        bad = non_finite(params)
        if bad:
            raise NonFiniteError(f"adapting '{self.source}' diverged: NaN or inf in "
                                 f"{', '.join(bad[:3])} after {steps} step(s); use fewer "
                                 "steps (--steps)")
        return AdaptedModel(self.model, params, "gradient", names,
                            self._bn_stats(self.model, params, x))

    def _adapt_context(self, x: torch.Tensor, y: torch.Tensor, steps: int | None,
                       names: list[str]) -> AdaptedModel:
        """CAVIA: SGD on a zero-initialised context only; every weight stays as stored."""
        steps = int(self.rule["steps"] if steps is None else steps)
        ctx = torch.zeros(self.rule["context_dim"])
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        for _ in range(steps):
            ctx = ctx.detach().requires_grad_(True)
            with torch.enable_grad(), film_applied(self.model, self.film_of(ctx)):
                loss = F.cross_entropy(self.model(x), y)
                (grad,) = torch.autograd.grad(loss, [ctx])
            ctx = ctx.detach() - self.rule["inner_lr"] * grad
        if not bool(torch.isfinite(ctx).all()):
            raise NonFiniteError(f"adapting '{self.source}' diverged: NaN or inf in the "
                                 f"context after {steps} step(s); use fewer steps (--steps)")
        film = {b: (g.detach(), bt.detach()) for b, (g, bt) in self.film_of(ctx).items()}
        with film_applied(self.model, film):
            stats = self._bn_stats(self.model, params, x)
        return AdaptedModel(self.model, params, "gradient", names, stats, film=film)

    @torch.no_grad()
    def _bn_stats(self, module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                  prefix: str = "") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-BatchNorm batch statistics (mean, biased var) of ``x`` at ``params``."""
        stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = []
        for name, bn in _batchnorms(module).items():
            def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
                dims = [d for d in range(args[0].dim()) if d != 1]
                stats[name[len(prefix):]] = (args[0].mean(dims),
                                             args[0].var(dims, unbiased=False))
            hooks.append(bn.register_forward_pre_hook(hook))
        try:
            functional_call(module, params, (x,))
        finally:
            for h in hooks:
                h.remove()
        return stats


def adapt_folder(model: str | os.PathLike | ImageInputs, support: str | os.PathLike,
                 queries: Sequence[str | os.PathLike], steps: int | None = None,
                 bn: str = "support") -> list[Prediction]:
    """The whole device flow: load (a path: an .mpz), read the support folder, adapt, predict
    the queries. ``model`` may also be a loaded model of either runtime."""
    dm = model if isinstance(model, ImageInputs) else DeviceModel.load(model)
    s = dm.load_support(support)
    adapted = dm.adapt(s.x, s.y, steps=steps, class_names=s.class_names)
    qx, files = dm.load_queries(queries)
    return adapted.predict(qx, files, bn=bn)
