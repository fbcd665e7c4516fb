"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) as a plugin.

After a stage, the diagonal (empirical) Fisher information of the shared parameters is
estimated on that stage's data and the parameters are anchored; later stages add the quadratic
penalty ``lambda / 2 * sum_k F_k (theta_k - theta*_k)^2``. Fishers of successive stages add up
(one anchor: the latest). In a federation each site estimates the Fisher on its own data and the
server averages them (a backbone-sized message per site and stage).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unicon_core.continual.plugins.base import ContinualPlugin

if TYPE_CHECKING:
    from unicon_core.continual.runner import RunContext, Strategy
    from unicon_core.continual.stages import StagePlan

Tensors = dict[str, torch.Tensor]
#: ``(strategy, plan, ctx) -> (model, parameter names, Fisher)`` after a stage.
FisherFn = Callable[["Strategy", "StagePlan", "RunContext"], tuple[nn.Module, list[str], Tensors]]


def fisher_diagonal(
    model: nn.Module, names: Iterable[str], batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
) -> Tensors:
    """Mean over ``batches`` of the squared gradient of ``loss_fn`` per named parameter."""
    params = dict(model.named_parameters())
    chosen = {n: params[n] for n in names}
    flags = {n: p.requires_grad for n, p in chosen.items()}
    fisher = {n: torch.zeros_like(p) for n, p in chosen.items()}
    count = 0
    try:
        for p in chosen.values():
            p.requires_grad_(True)
        for batch in batches:
            grads = torch.autograd.grad(loss_fn(model, batch), list(chosen.values()),
                                        allow_unused=True)
            for n, g in zip(chosen, grads, strict=True):
                if g is not None:
                    fisher[n] += g.detach().pow(2)
            count += 1
    finally:
        for n, p in chosen.items():
            p.requires_grad_(flags[n])
    return {n: f / max(count, 1) for n, f in fisher.items()}


def ewc_penalty(
    params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor],
    fisher: Mapping[str, torch.Tensor], lam: float = 1.0,
) -> torch.Tensor:
    """``lam / 2 * sum F (theta - theta*)^2`` over the anchored names (0 at the anchor)."""
    terms = [(fisher[n].to(params[n]) * (params[n] - anchor[n].to(params[n])).pow(2)).sum()
             for n in anchor]
    return lam / 2 * torch.stack(terms).sum() if terms else torch.zeros(())


class EWCPlugin(ContinualPlugin):
    """Anchor shared parameters after each stage; penalise moving them in later stages."""

    name = "ewc"

    def __init__(self, lam: float = 1.0, fisher_fn: FisherFn | None = None,
                 enabled: bool = True) -> None:
        super().__init__(enabled)
        self.lam, self.fisher_fn = lam, fisher_fn
        self.anchor: Tensors = {}
        self.fisher: Tensors = {}

    def consolidate(self, model: nn.Module, fisher: Mapping[str, torch.Tensor]) -> None:
        """Anchor the named parameters at their current values and add ``fisher``."""
        params = dict(model.named_parameters())
        for n, f in fisher.items():
            self.anchor[n] = params[n].detach().clone()
            self.fisher[n] = self.fisher.get(n, torch.zeros_like(f)) + f.detach()

    def on_after_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Estimate the stage's Fisher (``fisher_fn``, else the strategy's ``fisher(plan, ctx)``
        on its ``model``) and consolidate; nothing when neither exists."""
        if self.fisher_fn is not None:
            model, _, fisher = self.fisher_fn(strategy, plan, ctx)
            self.consolidate(model, fisher)
        elif callable(getattr(strategy, "fisher", None)) and getattr(strategy, "model", None):
            self.consolidate(strategy.model, strategy.fisher(plan, ctx))  # type: ignore[attr-defined]

    def compute_loss(
        self, model: nn.Module, task: str, batch: dict[str, Any], outputs: torch.Tensor
    ) -> torch.Tensor | None:
        """The EWC penalty (``None`` before the first consolidation)."""
        if not self.anchor or self.lam == 0:
            return None
        params = dict(model.named_parameters())
        return ewc_penalty({n: params[n] for n in self.anchor}, self.anchor, self.fisher, self.lam)
