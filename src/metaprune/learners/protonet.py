"""Prototypical networks (Snell et al. 2017): class means of embeddings, no inner loop."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..models.layers import Embedding
from .base import Adapted, Learner, Params
from .registry import register_learner


@register_learner("protonet")
class ProtoNet(Learner):
    """'Adaptation' computes prototypes; the classifier head of the model is unused."""

    name = "protonet"

    def __init__(self, model: nn.Module, **kw):
        kw["inner_steps"] = 0
        kw.setdefault("eval_inner_steps", 0)
        super().__init__(model, **kw)
        self._embed = Embedding(model)

    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._embed, {f"m.{n}": p for n, p in params.items()}, (x,))

    def adapt(self, support_x, support_y, params=None, steps=None, create_graph=False):
        params = dict(self.params() if params is None else params)
        z = self.embed(params, support_x)
        n_way = int(support_y.max().item()) + 1
        protos = torch.stack([z[support_y == c].mean(0) for c in range(n_way)])
        return Adapted(params, prototypes=protos)

    def predict(self, adapted: Adapted, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(adapted.params, x)
        return -torch.cdist(z, adapted.prototypes).pow(2)
