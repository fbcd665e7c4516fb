"""Continual strategies and adaptation strategies, one per file, compared on the same budget.

Continual strategies (go through every stage): ``isolated`` (unicon: per-task skills on the real
federated path), ``naive_sequential`` (one shared adapter: the forgetting baseline),
``local_only``, ``centralised`` (pooled upper bound), ``full_fedavg`` (communication baseline),
``refined`` (one shared backbone refined stage after stage, continual plugins as retention terms).

Adaptation strategies (one task, federated with the plan of what each one trains, see
:mod:`unicon_core.training.plans`): ``linear_probe``, ``full_finetune``, ``lora``,
``gradual_unfreezing``, ``discriminative_lr``.

Every strategy trains through the run context's federated engine: the product's ServerApp
strategy and ClientApp (:mod:`unicon_flower.continual`).
"""

from __future__ import annotations

from collections.abc import Callable

from unicon_core.continual.baselines.centralised import Centralised
from unicon_core.continual.baselines.full_fedavg import FullModelFedAvg
from unicon_core.continual.baselines.isolated import IsolatedSkills
from unicon_core.continual.baselines.local_only import LocalOnly
from unicon_core.continual.baselines.naive_sequential import NaiveSequential
from unicon_core.continual.baselines.refined import RefinedFoundation
from unicon_core.training.plans import Plan

CONTINUAL_STRATEGIES: dict[str, Callable[[], object]] = {
    "isolated": IsolatedSkills,
    "naive_sequential": NaiveSequential,
    "local_only": LocalOnly,
    "centralised": Centralised,
    "full_fedavg": FullModelFedAvg,
    "refined": RefinedFoundation,
}

#: Adaptation strategy -> the plan it federates (:mod:`unicon_core.training.plans`).
ADAPTATION_STRATEGIES: dict[str, Plan] = {
    "linear_probe": Plan.HEAD,
    "full_finetune": Plan.FULL_FINETUNE,
    "lora": Plan.SKILL,
    "gradual_unfreezing": Plan.GRADUAL_UNFREEZING,
    "discriminative_lr": Plan.DISCRIMINATIVE_LR,
}

__all__ = ["ADAPTATION_STRATEGIES", "CONTINUAL_STRATEGIES", "Centralised", "FullModelFedAvg",
           "IsolatedSkills", "LocalOnly", "NaiveSequential", "RefinedFoundation"]
