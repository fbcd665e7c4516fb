"""Adaptation strategy *linear probing*: only the head trains; stem and backbone stay as built."""

from __future__ import annotations

from unicon_core.continual.fedloop import ParamPlan, head_names
from unicon_core.model import UniconModel


def plan(model: UniconModel, task: str, r: int, rounds: int) -> ParamPlan:
    """The task's head, every round."""
    return ParamPlan(head_names(model, task))
