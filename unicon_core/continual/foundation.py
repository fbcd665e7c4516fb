"""Optional foundation stage: the backbone trained by full-model FedAvg on the first task.

An alternative to a pretrained checkpoint: the first task's sites run full-model FedAvg (plan
``full``: backbone + the task's skill, on the product's federation through the run
context's engine), then the backbone and that task's stem are saved as a foundation checkpoint
(the stem becomes a frozen foundation stem, shared by every later task of the same modality and
geometry). Later stages load it frozen, as any ``backbone.checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unicon_core.continual.engine import FederatedJob, FederatedOutcome
from unicon_core.continual.runner import RunContext
from unicon_core.model import UniconModel
from unicon_core.model.stems import StemSpec
from unicon_core.training.plans import Plan, load_plan_state


def federated_foundation(
    ctx: RunContext, sites: list[str], out: Path
) -> tuple[Path, FederatedOutcome]:
    """Train on ``sites`` (one task) and write the foundation to ``out``; returns its path and
    the run (evaluated on the sites' validation split: model choice only)."""
    from unicon_core.model.foundation import save_foundation

    spec = ctx.sites[sites[0]].task_spec
    if any(ctx.sites[s].task_spec.name != spec.name for s in sites):
        raise ValueError("the foundation stage trains on the sites of one task")
    model = UniconModel(ctx.backbone, seed=ctx.seed)
    model.add_task(spec)
    result = ctx.federate(FederatedJob(list(sites), out.parent / f"{out.stem}_run",
                                       plan=Plan.FULL.value, eval_split="val"))
    load_plan_state(model, spec.name, Plan.FULL, result.states[spec.name])
    foundation = UniconModel(ctx.backbone, seed=ctx.seed)
    stem_spec = StemSpec.from_task(spec)
    foundation.add_stem(stem_spec, owner=None)
    foundation.load_backbone_state_dict(model.backbone_state_dict())
    with torch.no_grad():
        trained_stem = model.stems[model.task_stem[spec.name]].state_dict()
        foundation.stems[stem_spec.key].load_state_dict(trained_stem)
    save_foundation(foundation, out, extra={"stage": "federated full-model FedAvg",
                                            "task": spec.name, "sites": list(sites)})
    return out, result
