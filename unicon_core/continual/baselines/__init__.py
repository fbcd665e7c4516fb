"""Continual strategies and adaptation strategies, one per file, compared on the same budget.

Continual strategies (go through every stage): ``isolated`` (unicon: per-task skills on the real
federated path), ``naive_sequential`` (one shared adapter: the forgetting baseline),
``local_only``, ``centralised`` (pooled upper bound), ``full_fedavg`` (communication baseline),
``refined`` (one shared backbone refined stage after stage, continual plugins as retention terms).

Adaptation strategies (one task, FedAvg over the parameters each one trains): ``linear_probe``,
``full_finetune``, ``lora``, ``gradual_unfreezing``, ``discriminative_lr``.
"""

from __future__ import annotations

from collections.abc import Callable

from unicon_core.continual.baselines import (
    discriminative_lr,
    full_finetune,
    gradual_unfreezing,
    linear_probe,
    lora,
)
from unicon_core.continual.baselines.centralised import Centralised
from unicon_core.continual.baselines.full_fedavg import FullModelFedAvg
from unicon_core.continual.baselines.isolated import IsolatedSkills
from unicon_core.continual.baselines.local_only import LocalOnly
from unicon_core.continual.baselines.naive_sequential import NaiveSequential
from unicon_core.continual.baselines.refined import RefinedFoundation
from unicon_core.continual.fedloop import PlanFn

CONTINUAL_STRATEGIES: dict[str, Callable[[], object]] = {
    "isolated": IsolatedSkills,
    "naive_sequential": NaiveSequential,
    "local_only": LocalOnly,
    "centralised": Centralised,
    "full_fedavg": FullModelFedAvg,
    "refined": RefinedFoundation,
}

ADAPTATION_STRATEGIES: dict[str, PlanFn] = {
    "linear_probe": linear_probe.plan,
    "full_finetune": full_finetune.plan,
    "lora": lora.plan,
    "gradual_unfreezing": gradual_unfreezing.plan,
    "discriminative_lr": discriminative_lr.plan,
}

__all__ = ["ADAPTATION_STRATEGIES", "CONTINUAL_STRATEGIES", "Centralised", "FullModelFedAvg",
           "IsolatedSkills", "LocalOnly", "NaiveSequential", "RefinedFoundation"]
