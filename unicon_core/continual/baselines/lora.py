"""Adaptation strategy *LoRA*: the task's skill (LoRA adapter + head + its stem); unicon's."""

from __future__ import annotations

from unicon_core.continual.fedloop import ParamPlan, skill_names
from unicon_core.model import UniconModel


def plan(model: UniconModel, task: str, r: int, rounds: int) -> ParamPlan:
    """The task's skill, every round."""
    return ParamPlan(skill_names(model, task))
