"""Bytes per site and round: a task's skill vs the full model, on the same message shapes.

Both columns come from :func:`unicon_core.continual.fedloop.round_bytes`, i.e. Flower's
serialized message content measured by the accounting function the server uses (train and
evaluate instruction down, both replies up), for the default and a larger backbone.
"""

from __future__ import annotations

from typing import Any

from unicon_core.config import BackboneConfig, TaskSpec
from unicon_core.continual.baselines.full_fedavg import plan as full_plan
from unicon_core.continual.fedloop import round_bytes, skill_names
from unicon_core.model import UniconModel


def bytes_table(specs: dict[str, TaskSpec], backbones: dict[str, BackboneConfig]) -> list[dict]:
    """One row per (backbone, task): skill and full-model bytes per site and round."""
    rows: list[dict[str, Any]] = []
    for label, cfg in backbones.items():
        model = UniconModel(cfg, seed=0)
        for task, spec in specs.items():
            model.add_task(spec)
            skill = round_bytes(model, task, skill_names(model, task))
            full = round_bytes(model, task, full_plan(model, task, 0, 1).names)
            s = skill["bytes_down"] + skill["bytes_up"]
            f = full["bytes_down"] + full["bytes_up"]
            rows.append({"backbone": label, "task": task, "skill_bytes": s, "full_bytes": f,
                         "ratio": s / f,
                         "skill_params": sum(p.numel() for p in model.skill_parameters(task)
                                             .values()),
                         "backbone_params": sum(t.numel() for t in
                                                model.backbone_state_dict().values())})
    return rows
