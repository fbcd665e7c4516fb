"""Adaptation strategy *gradual unfreezing* (ULMFiT): unfreeze from the top, one depth per step.

Depths (see :mod:`layers`): head and final norm first, then backbone blocks from the last to the
first, then the stem. Over ``rounds`` rounds the unfrozen depth grows linearly, so the first
round trains only the top and the last round trains everything (as full fine-tuning).
"""

from __future__ import annotations

import math

from unicon_core.continual.baselines.full_finetune import plan as full_plan
from unicon_core.continual.baselines.layers import depth, num_layers
from unicon_core.continual.fedloop import ParamPlan
from unicon_core.model import UniconModel


def unfrozen_from(r: int, rounds: int, top: int) -> int:
    """Lowest depth trained in round ``r`` (0-based) of ``rounds``; ``top`` is the head's."""
    if rounds == 1:
        return 0
    return max(0, top - math.floor(r * top / (rounds - 1)))


def plan(model: UniconModel, task: str, r: int, rounds: int) -> ParamPlan:
    """The depths from the top down to this round's lowest unfrozen depth."""
    layers = num_layers(model)
    lowest = unfrozen_from(r, rounds, layers + 1)
    names = [n for n in full_plan(model, task, r, rounds).names if depth(n, model) >= lowest]
    return ParamPlan(names)
