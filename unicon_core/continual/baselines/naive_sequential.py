"""The forgetting baseline: one adapter shared by every task, fine-tuned stage after stage.

Same federated path and budget as :mod:`isolated`; the only change is that a new task starts
from the shared adapter and, after a stage, the adapter it trained becomes every seen task's
adapter (heads and stems stay per task). Earlier tasks' heads then sit on an adapter that moved.
"""

from __future__ import annotations

from typing import Any

import torch

from unicon_core.continual.baselines.base import Skill
from unicon_core.continual.baselines.isolated import IsolatedSkills
from unicon_core.continual.runner import RunContext
from unicon_core.continual.stages import StagePlan
from unicon_core.keys import SkillPart

ADAPTER = SkillPart.ADAPTER.value + "."


def adapter_of(skill: Skill) -> Skill:
    """The ``adapter.*`` part of a skill."""
    return {k: v for k, v in skill.items() if k.startswith(ADAPTER)}


def with_adapter(skill: Skill, adapter: Skill) -> Skill:
    """``skill`` with its adapter replaced (keys must match: same LoRA spec)."""
    if set(adapter) != set(adapter_of(skill)):
        raise ValueError("a shared adapter needs the same LoRA spec for every task")
    return {**skill, **{k: v.clone() for k, v in adapter.items()}}


class NaiveSequential(IsolatedSkills):
    """Sequential fine-tuning of one shared adapter through the stages."""

    name = "naive_sequential"

    def __init__(self) -> None:
        super().__init__()
        self.shared: Skill | None = None

    def start_skill(self, task: str, ctx: RunContext) -> Skill:
        """The task's own start, with the shared adapter."""
        skill = super().start_skill(task, ctx)
        return skill if self.shared is None else with_adapter(skill, self.shared)

    def train_stage(self, plan: StagePlan, ctx: RunContext) -> dict[str, Any]:
        """Train as usual, then give every seen task the adapter just trained."""
        log = super().train_stage(plan, ctx)
        adapters = [adapter_of(self.skills[t]) for t in plan.trained_tasks]
        self.shared = {k: torch.stack([a[k] for a in adapters]).mean(0) for k in adapters[0]}
        for task in list(self.skills):
            self.skills[task] = with_adapter(self.skills[task], self.shared)
        return log
