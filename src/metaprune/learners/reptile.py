"""Reptile (Nichol et al. 2018): move the initialisation towards task-adapted weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.tasks import Task
from .base import Learner
from .registry import register_learner


@register_learner("reptile")
class Reptile(Learner):
    """The outer 'gradient' is theta - mean_tau(theta'_tau), fed to the meta-optimiser.

    Pruned weights are 0 in theta and in every theta'_tau (masked inner loop), so their
    pseudo-gradient is 0 too; the optimiser step is masked all the same.
    """

    name = "reptile"

    def __init__(self, model, **kw):
        kw["first_order"] = True
        super().__init__(model, **kw)

    def meta_step(self, tasks: Sequence[Task], batch_size: int | None = None
                  ) -> dict[str, float]:
        params = self.params()
        sums = {f"model.{n}": torch.zeros_like(p, dtype=torch.float64)
                for n, p in params.items()}
        loss_sum = acc_sum = 0.0
        for t in tasks:
            adapted = self.adapt(t.support_x, t.support_y, create_graph=False)
            with torch.no_grad():
                logits = self.predict(adapted, t.query_x)
                loss_sum += torch.nn.functional.cross_entropy(logits, t.query_y).item()
                acc_sum += (logits.argmax(1) == t.query_y).float().mean().item()
                for n in params:
                    sums[f"model.{n}"] += params[n] - adapted.params[n]
        return self.outer_step(sums, loss_sum, acc_sum,
                               len(tasks) if batch_size is None else int(batch_size))
