"""The learner interface shared by every meta-learning algorithm.

Parameters are plain dicts ``{name: tensor}`` passed to ``torch.func.functional_call``; the
meta-parameters live in ``learner.model`` (plus learner-specific extras such as Meta-SGD's
learning rates). Every learner is mask-aware: after ``set_masks``, the inner loop, the outer
optimiser step and test-time adaptation keep pruned weights at exactly 0.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..data.tasks import Task
from ..distributed import all_reduce_sum_, is_distributed, shard
from ..finite import NonFiniteError, non_finite
from ..masks import Masks, apply_masks, mask_grad, masked_optimizer_step, validate_masks

Params = dict[str, torch.Tensor]


def prefixed(prefix: str, params: Mapping[str, nn.Parameter]) -> dict[str, nn.Parameter]:
    """Learner-owned parameters (Meta-SGD's rates, CAVIA's FiLM) as ``prefix.name``: how they
    appear in ``meta_parameters`` and, detached, in ``extra_state``."""
    return {f"{prefix}.{k}": p for k, p in params.items()}


@dataclass
class Adapted:
    """The result of adapting to a task: fast weights (and, for metric learners, prototypes)."""

    params: Params
    prototypes: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


class Learner:
    """Base class. Subclasses override ``adapt`` / ``predict`` (and ``meta_step`` if the outer
    update is not the gradient of the meta-objective, e.g. Reptile)."""

    name = "base"
    # the learner's own values of the shared hyper-parameters (inner_lr, inner_steps,
    # eval_inner_steps, ...) where they differ from the config's, used when a config or a
    # constructor call leaves them out (CAVIA: the original paper's)
    defaults: dict[str, float | int] = {}
    # config() keys that define what the network computes and that a checkpoint must carry
    # with the current value (checkpoint.check_saved_learner refuses it otherwise)
    required_keys: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1,
                 eval_inner_steps: int | None = None, meta_lr: float = 1e-3,
                 first_order: bool = False, adapt_names: Sequence[str] | None = None):
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.eval_inner_steps = int(inner_steps if eval_inner_steps is None else eval_inner_steps)
        self.meta_lr = float(meta_lr)
        self.first_order = bool(first_order)
        all_names = [n for n, _ in model.named_parameters()]
        self.adapt_names = list(all_names if adapt_names is None else adapt_names)
        unknown = set(self.adapt_names) - set(all_names)
        if unknown:
            raise ValueError(f"adapt_names not in {type(model).__name__}: {sorted(unknown)}")
        self.masks: Masks = {}
        self._optimizer: torch.optim.Optimizer | None = None

    # ---- parameters, masks, optimiser -------------------------------------------------------
    def params(self) -> Params:
        """Current meta-parameters of the model (live tensors, requires_grad)."""
        return dict(self.model.named_parameters())

    def owned_parameters(self) -> dict[str, nn.Parameter]:
        """Learner-owned meta-parameters (Meta-SGD's rates, CAVIA's FiLM) as ``prefix.name``
        (see ``prefixed``): meta-trained, saved with the checkpoint, never pruned."""
        return {}

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        """Everything the outer loop optimises (model parameters plus learner extras)."""
        return {**{f"model.{n}": p for n, p in self.model.named_parameters()},
                **self.owned_parameters()}

    def set_masks(self, masks: Mapping[str, torch.Tensor] | None) -> None:
        masks = dict(masks or {})
        validate_masks(self.model, masks)
        dev = next(self.model.parameters()).device
        # in the model's parameter order, whatever order they came in (a checkpoint's tensor
        # order is arbitrary): code that sends masks to other ranks in dict order relies on it
        self.masks = {n: masks[n].to(dev, torch.float32) for n, _ in self.model.named_parameters()
                      if n in masks}
        apply_masks(self.params(), self.masks)
        if self._optimizer is not None:  # masks changed: clear the pruned entries' moments
            named = self.meta_parameters()
            for n, m in self.masks.items():
                p = named[f"model.{n}"]
                for v in self._optimizer.state.get(p, {}).values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v.mul_(m)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self.meta_parameters().values(), lr=self.meta_lr)
        return self._optimizer

    def optimizer_state(self) -> dict | None:
        """The meta-optimiser's ``state_dict()``, or None if no step was taken yet."""
        return None if self._optimizer is None else self._optimizer.state_dict()

    def load_optimizer_state(self, state: dict | None) -> None:
        """Restore a state from :meth:`optimizer_state` (None: a fresh optimiser)."""
        self._optimizer = None
        if state is not None:
            self.optimizer.load_state_dict(state)

    def set_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Use ``optimizer`` (over :meth:`meta_parameters`) for the outer step instead of the
        default Adam with ``meta_lr`` (checkpoints restore their state into the default Adam:
        a custom optimiser is for runs that do not resume)."""
        self._optimizer = optimizer

    def reset_optimizer(self) -> None:
        """Forget the meta-optimiser's moments (the next step starts a fresh one)."""
        self._optimizer = None

    def outer_masks(self) -> dict[str, torch.Tensor]:
        return {f"model.{n}": m for n, m in self.masks.items()}

    # ---- forward, adaptation, meta-objective ------------------------------------------------
    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, params, (x,))

    def inner_lr_for(self, name: str) -> torch.Tensor | float:
        return self.inner_lr

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor,
              params: Params | None = None, steps: int | None = None,
              create_graph: bool = False) -> Adapted:
        """Masked gradient steps on the support set: theta' = theta - lr * (grad * mask)."""
        params = dict(self.params() if params is None else params)
        steps = self.inner_steps if steps is None else steps
        names = self.adapt_names
        for _ in range(steps):
            loss = F.cross_entropy(self.forward(params, support_x), support_y)
            grads = torch.autograd.grad(loss, [params[n] for n in names],
                                        create_graph=create_graph)
            for n, g in zip(names, grads):
                if not create_graph:
                    g = g.detach()
                params[n] = params[n] - self.inner_lr_for(n) * mask_grad(n, g, self.masks)
        return Adapted(params)

    def predict(self, adapted: Adapted, x: torch.Tensor) -> torch.Tensor:
        return self.forward(adapted.params, x)

    def task_loss(self, task: Task, steps: int | None = None,
                  create_graph: bool | None = None) -> tuple[torch.Tensor, float]:
        """Meta-objective of one task: query loss after adapting on the support set."""
        cg = (not self.first_order) if create_graph is None else create_graph
        adapted = self.adapt(task.support_x, task.support_y, steps=steps, create_graph=cg)
        logits = self.predict(adapted, task.query_x)
        acc = (logits.argmax(1) == task.query_y).float().mean().item()
        return F.cross_entropy(logits, task.query_y), acc

    def meta_step(self, tasks: Sequence[Task], batch_size: int | None = None
                  ) -> dict[str, float]:
        """One outer step over a meta-batch (per-task loop; graphs freed task by task).

        Under torch.distributed, ``tasks`` is this rank's share of a meta-batch of
        ``batch_size`` tasks (default: ``len(tasks)``); see :meth:`outer_step`."""
        named = self.meta_parameters()
        sums: dict[str, torch.Tensor | None] = dict.fromkeys(named)
        loss_sum = acc_sum = 0.0
        for t in tasks:
            loss, acc = self.task_loss(t)
            grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
            for k, g in zip(named, grads):
                if g is not None:
                    sums[k] = g.double() if sums[k] is None else sums[k] + g
            loss_sum += loss.item()
            acc_sum += acc
        return self.outer_step(sums, loss_sum, acc_sum,
                               len(tasks) if batch_size is None else int(batch_size))

    def outer_step(self, grad_sums: Mapping[str, torch.Tensor | None], loss_sum: float,
                   acc_sum: float, batch_size: int) -> dict[str, float]:
        """Masked optimiser step on the mean over the meta-batch of per-task outer gradients.

        ``grad_sums[k]``: float64 sum of this rank's per-task gradients of meta-parameter
        ``k`` (None: no task reached it). The sums are added over the ranks, then divided by
        ``batch_size``. Float64 sums of float32 gradients are exact unless one entry's terms
        span more than 2^29 in magnitude, so the step does not depend on how the tasks were
        split: any number of ranks takes the same step as one process (bit for bit, in all
        but such rare entries)."""
        named = self.meta_parameters()
        sums = dict(grad_sums)
        if is_distributed():
            has = torch.tensor([sums.get(k) is not None for k in named], dtype=torch.float64)
            stats = torch.tensor([loss_sum, acc_sum], dtype=torch.float64)
            all_reduce_sum_([has, stats])
            loss_sum, acc_sum = stats.tolist()
            for (k, p), h in zip(named.items(), has.tolist()):
                if h and sums.get(k) is None:  # this rank's tasks did not reach k
                    sums[k] = torch.zeros_like(p, dtype=torch.float64)
            all_reduce_sum_(sums[k] for k in named if sums.get(k) is not None)
        # before the step: the weights and the optimiser's moments stay the last good ones
        if not math.isfinite(loss_sum):
            raise NonFiniteError(f"the meta-loss is {loss_sum / batch_size}")
        bad = non_finite({k: g for k, g in sums.items() if g is not None})
        if bad:
            raise NonFiniteError(f"the meta-gradient of {', '.join(bad[:3])} is not finite "
                                 f"(meta-loss {loss_sum / batch_size:.4g})")
        for k, p in named.items():
            g = sums.get(k)
            p.grad = None if g is None else (g / batch_size).to(p.dtype)
        masked_optimizer_step(self.optimizer, named, self.outer_masks())
        return {"loss": loss_sum / batch_size, "acc": acc_sum / batch_size}

    def meta_gradient(self, tasks: Sequence[Task], first_order: bool | None = None
                      ) -> dict[str, torch.Tensor]:
        """dL_meta/dtheta averaged over ``tasks`` (exact through the inner loop unless
        first_order), summed in float64; used by tests and by gradient-based pruning criteria.
        Under torch.distributed every rank passes the same ``tasks`` and computes its share."""
        params = self.params()
        total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        cg = (not self.first_order) if first_order is None else not first_order
        for t in shard(tasks):
            loss, _ = self.task_loss(t, create_graph=cg)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for n, g in zip(params, grads):
                if g is not None:
                    total[n] += g.detach()
        all_reduce_sum_(total.values())
        return {n: g / len(tasks) for n, g in total.items()}

    @torch.no_grad()
    def _eval_logits(self, adapted: Adapted, x: torch.Tensor) -> torch.Tensor:
        return self.predict(adapted, x)

    def evaluate_task(self, task: Task, steps: int | None = None) -> float:
        """Test-time adaptation then query accuracy (no graph kept)."""
        steps = self.eval_inner_steps if steps is None else steps
        with torch.enable_grad():
            adapted = self.adapt(task.support_x, task.support_y, steps=steps, create_graph=False)
        adapted.params = {n: p.detach() for n, p in adapted.params.items()}
        logits = self._eval_logits(adapted, task.query_x)
        return (logits.argmax(1) == task.query_y).float().mean().item()

    def digest(self) -> str:
        """sha256 of everything that decides this learner's predictions: its config, weights,
        buffers, masks and extras (caches of evaluations are keyed on it)."""
        h = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode())
        named = {**{f"model.{n}": t for n, t in self.model.state_dict().items()},
                 **{f"mask.{n}": m for n, m in self.masks.items()},
                 **{f"learner.{n}": t for n, t in self.extra_state().items()}}
        for name in sorted(named):
            t = named[name].detach().to("cpu", copy=False).contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy()
                     .tobytes())
        return h.hexdigest()

    # ---- (de)serialisation ------------------------------------------------------------------
    def config(self) -> dict:
        return {"name": self.name, "inner_lr": self.inner_lr, "inner_steps": self.inner_steps,
                "eval_inner_steps": self.eval_inner_steps, "meta_lr": self.meta_lr,
                "first_order": self.first_order}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Learner-owned tensors saved with the checkpoint (``owned_parameters``, detached)."""
        return {k: p.detach() for k, p in self.owned_parameters().items()}

    def load_extra_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy each of ``state``'s entries into the owned parameter of the same name."""
        with torch.no_grad():
            for k, p in self.owned_parameters().items():
                if k in state:
                    p.copy_(state[k])
