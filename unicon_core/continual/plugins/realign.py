"""Skill re-alignment as a plugin (issue #15, item 4): around every stage that may change the
shared backbone, re-validate the earlier tasks on their own validation data.

Before the stage the earlier tasks' validation outputs are recorded; after it they are computed
again on the (possibly refined) backbone and :func:`~unicon_core.continual.realign.realign_skills`
compares them (bit-identical or not, primary metric before/after). With ``guarantee_identical``
any change is an error (a method that promises it: isolated skills). A task that lost more than
``tolerance`` is briefly re-tuned when the strategy offers ``retune(task, plan, ctx)``.
Reports per stage land in :attr:`reports`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from unicon_core.continual.plugins.base import ContinualPlugin, strategy_model
from unicon_core.continual.realign import RealignReport, realign_skills
from unicon_core.device import module_device
from unicon_core.keys import BatchKey

if TYPE_CHECKING:
    from unicon_core.continual.runner import RunContext, Strategy
    from unicon_core.continual.stages import StagePlan


def _val_batches(task: str, plan: StagePlan, ctx: RunContext) -> list[dict[str, Any]]:
    from unicon_core.training import make_loader

    return [b for s in ctx.task_sites(task, plan.index)
            for b in make_loader(ctx.sites[s].dataset("val", train=False), ctx.cfg.batch_size,
                                 shuffle=False)]


class RealignPlugin(ContinualPlugin):
    """Re-validate (and optionally re-tune) earlier skills after every stage."""

    name = "realign"

    def __init__(self, tolerance: float = 0.0, guarantee_identical: bool = False,
                 retune: bool = True, enabled: bool = True) -> None:
        super().__init__(enabled)
        self.tolerance, self.guarantee_identical = tolerance, guarantee_identical
        self.retune = retune
        self.reports: list[list[RealignReport]] = []
        self._before: dict[str, torch.Tensor] = {}
        self._batches: dict[str, list[dict[str, Any]]] = {}

    def _predict(self, strategy: Any, task: str, ctx: RunContext) -> torch.Tensor:
        model = strategy_model(strategy, ctx)
        assert model is not None
        model.load_skill_state_dict(task, strategy.skills[task])  # type: ignore[operator]
        model.eval()
        device = module_device(model)
        with torch.no_grad():
            return torch.cat([model(b[BatchKey.INPUT.value].to(device), task).float().cpu()
                              for b in self._batches[task]])

    def _score(self, strategy: Any, task: str, outputs: torch.Tensor, ctx: RunContext) -> float:
        from unicon_core.metrics import PRIMARY_METRIC, metric_for

        spec = strategy_model(strategy, ctx).spec(task)  # type: ignore[union-attr]
        metric = metric_for(spec, primary_only=True)
        start = 0
        for batch in self._batches[task]:
            n = len(batch[BatchKey.INPUT.value])
            metric.update(outputs[start:start + n], batch)
            start += n
        return float(metric.aggregate()[PRIMARY_METRIC[spec.kind]])

    def on_before_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Record the earlier tasks' validation outputs."""
        skills = getattr(strategy, "skills", {})
        self._batches = {t: _val_batches(t, plan, ctx) for t in skills}
        self._before = {t: self._predict(strategy, t, ctx) for t in skills}

    def on_after_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Compare, and re-tune what lost more than the tolerance."""
        tasks = list(self._before)
        hook = getattr(strategy, "retune", None) if self.retune else None
        self.reports.append(realign_skills(
            tasks, lambda t: self._before[t], lambda t: self._predict(strategy, t, ctx),
            lambda t, out: self._score(strategy, t, out, ctx), tolerance=self.tolerance,
            retune=(lambda t: hook(t, plan, ctx)) if callable(hook) else None,
            guarantee_identical=self.guarantee_identical))
