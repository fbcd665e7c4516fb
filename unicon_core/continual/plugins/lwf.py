"""Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017) as a plugin.

Before a stage the model is copied (the teacher). While a new task trains, the earlier tasks'
outputs on the *new* data are kept close to the teacher's: ``alpha x sum_t KD_T(new_t, old_t)``
with Hinton's temperature ``T`` (the paper uses 2). Only earlier tasks whose input fits the new
task's stem (same modality, channels and geometry) can see the new data; others are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unicon_core.continual.plugins.base import ContinualPlugin, frozen_copy, strategy_model
from unicon_core.continual.plugins.kd import per_sample_logit_distance
from unicon_core.keys import BatchKey

if TYPE_CHECKING:
    from unicon_core.continual.runner import RunContext, Strategy
    from unicon_core.continual.stages import StagePlan


def lwf_loss(
    new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor], temperature: float = 2.0
) -> torch.Tensor:
    """Sum over tasks of the mean output distillation (0 when ``new`` equals ``old``)."""
    if set(new) != set(old):
        raise ValueError(f"tasks differ: {sorted(new)} vs {sorted(old)}")
    terms = [per_sample_logit_distance(new[t], old[t], temperature).mean() for t in sorted(new)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def same_input(model: Any, a: str, b: str) -> bool:
    """True when tasks ``a`` and ``b`` read the same kind of input (stem spec up to its key)."""
    sa = model.stem_specs[model.task_stem[a]]
    sb = model.stem_specs[model.task_stem[b]]
    return replace(sa, key="") == replace(sb, key="")


class LwFPlugin(ContinualPlugin):
    """Keep earlier tasks' outputs on new data close to the pre-stage model's."""

    name = "lwf"

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0, enabled: bool = True) -> None:
        super().__init__(enabled)
        self.alpha, self.temperature = alpha, temperature
        self.teacher: nn.Module | None = None

    def set_teacher(self, model: nn.Module) -> None:
        """Freeze a copy of ``model``: its tasks are the ones to remember."""
        self.teacher = frozen_copy(model)

    def on_before_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Snapshot the model before the stage."""
        model = strategy_model(strategy, ctx)
        if model is not None:
            self.set_teacher(model)

    def compute_loss(
        self, model: nn.Module, task: str, batch: dict[str, Any], outputs: torch.Tensor
    ) -> torch.Tensor | None:
        """``alpha x lwf_loss`` over the teacher's other tasks that can read this input."""
        if self.teacher is None or self.alpha == 0:
            return None
        teacher: Any = self.teacher
        old = [t for t in teacher.specs if t != task and t in getattr(model, "specs", {})
               and same_input(model, t, task)]
        if not old:
            return None
        x = batch[BatchKey.INPUT.value]
        teacher = teacher.to(x.device)
        with torch.no_grad():
            before = {t: teacher(x, t) for t in old}
        after = {t: model(x, t) for t in old}
        return self.alpha * lwf_loss(after, before, self.temperature)
