"""Adaptation strategy *discriminative (layer-wise) learning rates*: everything trains, lower
layers slower: depth ``d`` gets ``lr * DECAY ** (top - d)`` (head and final norm: ``lr``)."""

from __future__ import annotations

from unicon_core.continual.baselines.full_finetune import plan as full_plan
from unicon_core.continual.baselines.layers import depth, num_layers
from unicon_core.continual.fedloop import ParamPlan
from unicon_core.model import UniconModel

#: Learning-rate factor per layer below the top (ULMFiT uses 1/2.6).
DECAY = 1 / 2.6


def plan(model: UniconModel, task: str, r: int, rounds: int) -> ParamPlan:
    """Full fine-tuning with a learning-rate multiplier per depth."""
    layers = num_layers(model)
    names = full_plan(model, task, r, rounds).names
    top = layers + 1
    return ParamPlan(names, {n: DECAY ** (top - depth(n, model)) for n in names})
