"""MAML and its close relatives: first-order MAML, ANIL and Meta-SGD."""

from __future__ import annotations

import torch
from torch import nn

from .base import Learner, prefixed
from .registry import register_learner


@register_learner("maml")
class MAML(Learner):
    """Model-agnostic meta-learning (Finn et al. 2017); second order by default."""

    name = "maml"


@register_learner("fomaml")
class FOMAML(Learner):
    """First-order MAML: the inner-loop Jacobian is taken as the identity."""

    name = "fomaml"

    def __init__(self, model: nn.Module, **kw):
        kw["first_order"] = True
        super().__init__(model, **kw)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters of the classifier head: ``model.head`` if it exists, else the last Linear."""
    if isinstance(getattr(model, "head", None), nn.Module):
        return [f"head.{n}" for n, _ in model.head.named_parameters()]
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"ANIL: {type(model).__name__} has no Linear head to adapt")
    return [f"{last[-1]}.{n}" for n, _ in dict(model.named_modules())[last[-1]].named_parameters()]


@register_learner("anil")
class ANIL(Learner):
    """Almost No Inner Loop (Raghu et al. 2020): only the head adapts in the inner loop."""

    name = "anil"

    def __init__(self, model: nn.Module, **kw):
        kw["adapt_names"] = head_parameter_names(model)
        super().__init__(model, **kw)


@register_learner("metasgd")
class MetaSGD(Learner):
    """Meta-SGD (Li et al. 2017): a learned per-weight inner learning rate."""

    name = "metasgd"

    def __init__(self, model: nn.Module, **kw):
        super().__init__(model, **kw)
        self.lrs = nn.ParameterDict({
            n.replace(".", "__"): nn.Parameter(torch.full_like(p, self.inner_lr))
            for n, p in model.named_parameters()})

    def inner_lr_for(self, name: str) -> torch.Tensor:
        return self.lrs[name.replace(".", "__")]

    def owned_parameters(self) -> dict[str, nn.Parameter]:
        return prefixed("lr", self.lrs)
