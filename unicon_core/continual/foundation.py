"""Optional foundation stage: the backbone trained by full-model FedAvg on the first task.

An alternative to a pretrained checkpoint: the first task's sites run full-model FedAvg
(backbone + stem + head), then the backbone and that task's stem are saved as a foundation
checkpoint (the stem becomes a frozen foundation stem, shared by every later task of the same
modality and geometry). Later stages load it frozen, as any ``backbone.checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unicon_core.config import BackboneConfig, TrainConfig
from unicon_core.continual.baselines.full_fedavg import plan as full_plan
from unicon_core.continual.fedloop import Client, EvalSite, LoopResult, fedavg_loop
from unicon_core.model import UniconModel
from unicon_core.model.stems import StemSpec


def federated_foundation(
    backbone: BackboneConfig, seed: int, sites: list, rounds: int, train: TrainConfig,
    steps: int, out: Path,
) -> tuple[Path, LoopResult]:
    """Train on ``sites`` (one task) and write the foundation to ``out``; returns its path."""
    from unicon_core.model.foundation import save_foundation

    spec = sites[0].task_spec
    if any(s.task_spec.name != spec.name for s in sites):
        raise ValueError("the foundation stage trains on the sites of one task")
    model = UniconModel(backbone, seed=seed)
    model.add_task(spec)
    clients = [Client(s.name, s.dataset("train", train=True), steps, s.synthetic) for s in sites]
    evals = [EvalSite(s.name, s.dataset("val")) for s in sites]  # model choice only: val
    result = fedavg_loop(model, spec.name, clients, evals, full_plan, rounds=rounds, train=train)
    foundation = UniconModel(backbone, seed=seed)
    stem_spec = StemSpec.from_task(spec)
    foundation.add_stem(stem_spec, owner=None)
    foundation.load_backbone_state_dict(model.backbone_state_dict())
    with torch.no_grad():
        trained_stem = model.stems[model.task_stem[spec.name]].state_dict()
        foundation.stems[stem_spec.key].load_state_dict(trained_stem)
    save_foundation(foundation, out, extra={"stage": "federated full-model FedAvg",
                                            "task": spec.name, "sites": [s.name for s in sites]})
    return out, result
