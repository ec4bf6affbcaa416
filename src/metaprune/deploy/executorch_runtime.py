"""The ExecuTorch device runtime: adapt and predict with a ``.pte`` program written by
``metaprune export-executorch`` (:mod:`metaprune.deploy.executorch_export`), through the
ExecuTorch runtime's Python bindings. Same flow and output as :mod:`metaprune.deploy.runtime`
(support folder in, ``Prediction`` list out), but the arithmetic runs in ExecuTorch:

* adaptation = ``steps`` x (``adapt_loss`` forward + backward, then ExecuTorch's SGD optimiser
  with learning rate ``meta["sgd_lr"]`` = 1; the program scales each gradient by
  ``lr * mask``), so pruned weights stay exactly 0;
* prediction = the ``predict`` method, BatchNorm frozen at the support statistics.

The ExecuTorch training API is experimental (executorch 1.4). A training method returns
``(loss, gradients..., parameters...)``; the program's metadata methods
``__et_training_{gradients,parameters}_index_<method>`` and ``__et_training_fqn_<method>`` say
where each part starts and name the tensors, and the parameters are views of the program's
own memory when the outputs are not cloned (what ExecuTorch's ``TrainingModule`` wrapper does
on every call: here once per model, with no gradient copies). The two entry points used
(``_load_for_executorch_from_buffer`` and ``get_sgd_optimizer``) are imported in
:func:`_executorch` only. Dependencies: torch, numpy, Pillow, executorch and the
device-side modules of this package (nothing from the training stack).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..finite import NonFiniteError
from .format import FormatError, check_rule
from .runtime import AdaptedModel, ImageInputs

PTE_FORMAT = "metaprune-executorch"
PTE_VERSION = 1
LOSS_METHOD = "adapt_loss"
PREDICT_METHOD = "predict"
META_METHOD = "metaprune_meta"
XNNPACK_BACKEND = "XnnpackBackend"  # the XNNPACK delegate's id in a program and a runtime
PTE_MAGIC = b"ET"          # the ExecuTorch flatbuffer's file identifier (bytes 4..8: "ET12")


def is_pte(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) looks like an ExecuTorch program."""
    return len(head) >= 8 and head[4:6] == PTE_MAGIC


def _executorch() -> tuple[Any, Any]:
    """(load-from-buffer, get_sgd_optimizer) of the installed executorch."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from executorch.extension.pybindings.portable_lib import (
                _load_for_executorch_from_buffer,
            )
            from executorch.extension.training import get_sgd_optimizer
    except ImportError as e:
        raise ValueError("the ExecuTorch runtime needs the 'executorch' package: pip install "
                         "'metaprune[executorch]'") from e
    return _load_for_executorch_from_buffer, get_sgd_optimizer


def registered_backends() -> list[str] | None:
    """The delegate backends the installed ExecuTorch runtime has (None if it cannot say)."""
    try:
        from executorch.extension.pybindings import portable_lib

        return list(portable_lib._get_registered_backend_names())
    except (ImportError, AttributeError):
        return None


def set_threads(n: int) -> None:
    """Threads of ExecuTorch's CPU thread pool (its kernels'; torch's are set apart)."""
    with contextlib.suppress(ImportError):
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(int(n))


class ExecuTorchAdapted(AdaptedModel):
    """One task's adapted tensors, predicting through the program's ``predict`` method
    (``predict()`` and its output are :class:`AdaptedModel`'s)."""

    def __init__(self, program: ExecuTorchModel, adapted: list[torch.Tensor],
                 support: tuple[torch.Tensor, torch.Tensor], class_names: list[str]):
        params = dict(zip(program.meta["adapt"], adapted))
        super().__init__(None, params, program.rule["kind"], class_names, {})
        self.program, self.adapted, self.support = program, adapted, support

    def inference_module(self, fold_bn: bool = True) -> torch.nn.Module:
        raise NotImplementedError("an ExecuTorch-adapted model predicts through its program")

    @torch.no_grad()
    def logits(self, x: torch.Tensor, bn: str = "support") -> torch.Tensor:
        if bn != "support":
            raise ValueError("the ExecuTorch program predicts with support-statistics "
                             "BatchNorm only (--bn support)")
        step = int(self.program.meta["max_queries"])
        out = [self.program.run(PREDICT_METHOD, (*self.support, x[i:i + step].contiguous(),
                                                 *self.adapted))[0]
               for i in range(0, len(x), step)]
        return torch.cat(out)


class ExecuTorchModel(ImageInputs):
    """A loaded ``.pte`` program: its metadata, and adaptation / prediction through it."""

    def __init__(self, data: bytes, source: str = "<memory>"):
        self.source = source
        if not is_pte(data[:8]):
            raise ValueError(f"'{source}' is not an ExecuTorch program (.pte); write one with "
                             "'metaprune export-executorch MODEL.mpz --out MODEL.pte'")
        load, self._sgd_factory = _executorch()
        # ExecuTorch reads the program from this buffer without copying it (a freed buffer
        # crashes it): a private copy, referenced as long as the module lives
        self._data = bytes(bytearray(data))
        try:
            self.module = load(self._data)
            names = set(self.module.method_names())
        except Exception as e:
            backends = registered_backends()
            hint = ("" if backends is None or XNNPACK_BACKEND.encode() not in data
                    or XNNPACK_BACKEND in backends else
                    " (the program delegates to XNNPACK and this ExecuTorch runtime has no "
                    "XNNPACK backend: export it with 'metaprune export-executorch "
                    "--delegate portable')")
            raise ValueError(f"'{source}': ExecuTorch cannot load it: {e}{hint}") from e
        if META_METHOD not in names:
            raise ValueError(f"'{source}' is an ExecuTorch program but not one written by "
                             "'metaprune export-executorch' (no metadata method)")
        self.meta: dict[str, Any] = json.loads(bytes(self.run(META_METHOD, ())[0].numpy()))
        if self.meta.get("format") != PTE_FORMAT or self.meta.get("version") != PTE_VERSION:
            raise FormatError(f"'{source}': format {self.meta.get('format')!r} version "
                              f"{self.meta.get('version')!r}, expected {PTE_FORMAT!r} "
                              f"version {PTE_VERSION}")
        check_rule(self.meta.get("rule"), f"'{source}'")
        self.rule = dict(self.meta["rule"])
        self.channels, self.size = self.meta["input"]["channels"], self.meta["input"]["size"]
        self.loss_method = self.meta["methods"]["loss"]
        self._params: dict[str, torch.Tensor] | None = None  # views of the program's memory
        self._initial: dict[str, torch.Tensor] = {}
        self._grad_slice = slice(0, 0)
        self._sgd = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExecuTorchModel:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"model file '{p}' does not exist")
        return cls(p.read_bytes(), str(p))

    def run(self, method: str, inputs: Sequence[Any]) -> list[torch.Tensor]:
        return self.module.run_method(method, tuple(inputs))

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One forward + backward of the training method, then ExecuTorch's SGD step."""
        out = self.module.run_method(self.loss_method, (x, y), clone_outputs=False)
        self._sgd.step(dict(zip(self._initial, out[self._grad_slice])))

    def _fresh_parameters(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The program's trainable tensors (ExecuTorch's memory), reset to the stored values.
        They are outputs of the training method: the first call runs it once, unused."""
        if self._params is None:
            m = self.loss_method
            start = self.run(f"__et_training_gradients_index_{m}", ())[0]
            end = self.run(f"__et_training_parameters_index_{m}", ())[0]
            names = list(self.run(f"__et_training_fqn_{m}", ()))
            out = self.module.run_method(m, (x, y), clone_outputs=False)
            self._params = dict(zip(names, out[end:]))
            self._initial = {n: p.clone() for n, p in self._params.items()}
            self._grad_slice = slice(start, end)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._sgd = self._sgd_factory(self._params, float(self.meta["sgd_lr"]))
        for n, p in self._params.items():
            p.copy_(self._initial[n])
        return self._params

    def check_support(self, x: torch.Tensor, y: torch.Tensor) -> None:
        m = self.meta
        want = (m["n_support"], self.channels, self.size, self.size)
        labels = torch.arange(m["n_way"]).repeat_interleave(m["k_shot"])
        if tuple(x.shape) != want or not torch.equal(torch.sort(y).values, labels):
            raise ValueError(f"'{self.source}' was exported for {m['n_way']}-way "
                             f"{m['k_shot']}-shot support sets ({m['n_support']} images of "
                             f"{self.channels}x{self.size}x{self.size}, {m['k_shot']} per "
                             f"class); this one has {len(x)} images in {int(y.max()) + 1} "
                             "classes: export again with --k-shot (and a model of that "
                             "many ways)")

    def adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int | None = None,
              class_names: Sequence[str] | None = None) -> ExecuTorchAdapted:
        """Adapt on a support set (labels 0..N-1) with the program's rule."""
        self.check_support(x, y)
        x, y = x.float().contiguous(), y.long().contiguous()
        names = (list(class_names) if class_names is not None
                 else [str(i) for i in range(self.meta["n_way"])])
        steps = int(self.rule["steps"] if steps is None else steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        adapted: list[torch.Tensor] = []
        if self.loss_method is not None:
            params = self._fresh_parameters(x, y)
            for _ in range(steps):
                self._step(x, y)
            adapted = [params[f"p{i}"].clone() for i in range(len(self.meta["adapt"]))]
            if not all(bool(torch.isfinite(t).all()) for t in adapted):
                raise NonFiniteError(f"adapting '{self.source}' diverged: NaN or inf after "
                                     f"{steps} step(s); use fewer steps (--steps)")
        return ExecuTorchAdapted(self, adapted, (x, y), names)

