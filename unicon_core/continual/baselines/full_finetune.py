"""Adaptation strategy *full fine-tuning*: backbone, stem and head all train (no LoRA)."""

from __future__ import annotations

from unicon_core.continual.fedloop import ParamPlan, backbone_names, head_names, stem_names
from unicon_core.model import UniconModel


def plan(model: UniconModel, task: str, r: int, rounds: int) -> ParamPlan:
    """Every weight of the task's model except the (identity-initialised) LoRA adapter."""
    return ParamPlan(stem_names(model, task) + backbone_names(model) + head_names(model, task))
