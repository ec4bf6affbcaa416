"""CAVIA (Zintgraf et al. 2019, "Fast context adaptation via meta-learning").

Each task gets a context vector (``context_dim`` numbers, zero at the start of every task). A
FiLM layer in chosen blocks of the backbone (the third by default) scales and shifts the
block's channels by a linear map of the context, where CAVIA's own network does: after
BatchNorm and max-pooling, before the ReLU (``models.layers.FILM_SITE``), as
``gamma * out + beta`` with ``[gamma, beta] = W c + b``, ``W`` Kaiming-uniform and ``b``
nn.Linear's default (the original's initialisation). The inner loop adapts ONLY the
context (second order by default); the outer loop meta-trains every backbone weight and the
FiLM generators. Pruning sees the backbone's Conv2d/Linear weights as usual; the FiLM
generators and the context are learner state (``extra_state``), never pruned.

The backbone must expose its blocks as ``model.features`` (Conv4 does). Forward passes outside
the learner (``model(x)``) use a zero context: the un-adapted network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..models.layers import FILM_SITE, add_film_hooks, block_channels, film_parameters
from .base import Learner, Params, prefixed
from .registry import register_learner

CONTEXT = "context"


@register_learner("cavia")
class CAVIA(Learner):
    name = "cavia"
    defaults = {"inner_lr": 1.0, "inner_steps": 2, "eval_inner_steps": 2}  # Zintgraf et al.
    required_keys = ("film_site",)  # a checkpoint from before FiLM sat there computes otherwise

    def __init__(self, model: nn.Module, context_dim: int = 100,
                 film_blocks: Sequence[int] = (2,), film_site: str = FILM_SITE, **kw):
        super().__init__(model, **{**self.defaults, **kw})
        if film_site != FILM_SITE:
            raise ValueError(f"CAVIA: film_site {film_site!r} is not supported (only "
                             f"{FILM_SITE!r}: conv - BatchNorm - pool - FiLM - ReLU)")
        blocks = getattr(model, "features", None)
        if not isinstance(blocks, nn.Sequential):
            raise ValueError(f"CAVIA needs a backbone whose blocks are model.features (an "
                             f"nn.Sequential, as in conv4); {type(model).__name__} has none")
        ok = (isinstance(context_dim, int) and not isinstance(context_dim, bool)
              and context_dim >= 1 and isinstance(film_blocks, (list, tuple)) and film_blocks
              and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < len(blocks)
                      for b in film_blocks) and len(set(film_blocks)) == len(film_blocks))
        if not ok:
            raise ValueError(f"CAVIA: context_dim must be an integer >= 1 and film_blocks a "
                             f"list of distinct indices of the {len(blocks)} blocks, got "
                             f"{context_dim!r}, {film_blocks!r}")
        film_blocks = list(film_blocks)
        self.context_dim = int(context_dim)
        self.film_blocks = film_blocks
        self.adapt_names = [CONTEXT]
        self.film = nn.ParameterDict()
        for b in film_blocks:
            generator = nn.Linear(self.context_dim, 2 * block_channels(blocks[b]))
            nn.init.kaiming_uniform_(generator.weight, nonlinearity="linear")  # as CAVIA's code
            self.film[f"b{b}_weight"] = generator.weight
            self.film[f"b{b}_bias"] = generator.bias
        self.film.to(next(model.parameters()).device)
        self._context: torch.Tensor | None = None
        add_film_hooks(model, film_blocks, self._gamma_beta)

    def _gamma_beta(self, b: int, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self._context
        if ctx is None:  # outside the learner: the un-adapted (zero) context
            ctx = out.new_zeros(self.context_dim)
        return film_parameters(ctx, self.film[f"b{b}_weight"], self.film[f"b{b}_bias"])

    def params(self) -> Params:
        """The model's parameters and a fresh zero context (what each task starts from)."""
        params = super().params()
        ref = next(self.model.parameters())
        params[CONTEXT] = torch.zeros(self.context_dim, dtype=ref.dtype, device=ref.device,
                                      requires_grad=True)
        return params

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        params = dict(params)
        self._context = params.pop(CONTEXT, None)
        try:
            return functional_call(self.model, params, (x,))
        finally:
            self._context = None

    def owned_parameters(self) -> dict[str, nn.Parameter]:
        return prefixed("film", self.film)

    def config(self) -> dict:
        return {**super().config(), "context_dim": self.context_dim,
                "film_blocks": list(self.film_blocks), "film_site": FILM_SITE}
