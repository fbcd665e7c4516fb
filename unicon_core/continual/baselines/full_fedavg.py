"""The communication baseline: full-model FedAvg per task (backbone + stem + head + adapter).

Every round each site receives and returns the whole model of its task (plan ``full``); the
backbone is trained too, so each task ends with its own backbone (a task's value is measured
with its own model). One federated run per stage; per-task aggregation keeps each task's
backbone apart. Bytes are those the product's strategy measures.
"""

from __future__ import annotations

from typing import Any

from unicon_core.continual.baselines.base import (
    Skill,
    SkillStrategy,
    as_arrays,
    job_dir,
    metric_of,
)
from unicon_core.continual.engine import FederatedJob
from unicon_core.continual.runner import RunContext
from unicon_core.continual.stages import StagePlan
from unicon_core.model import UniconModel
from unicon_core.training.plans import Plan, load_plan_state, plan_state


class FullModelFedAvg(SkillStrategy):
    """Per-task FedAvg of the full model."""

    name = "full_fedavg"

    def __init__(self) -> None:
        super().__init__()
        self.backbones: dict[str, Skill] = {}
        self.fresh_backbone: Skill = {}

    def _load_backbone(self, model: UniconModel, state: Skill) -> None:
        """Copy backbone weights (plain names, as ``backbone_state_dict``) into the model."""
        model.load_backbone_state_dict(state)

    def _backbone(self, model: UniconModel) -> Skill:
        return {n: t.clone() for n, t in model.backbone_state_dict().items()}

    def init_from(self, target: str, source: str, ctx: RunContext) -> None:
        """Skill expanded as for skills; the backbone of ``source`` too."""
        super().init_from(target, source, ctx)
        self.backbones[target] = self.backbones[source]

    def train_stage(self, plan_: StagePlan, ctx: RunContext) -> dict[str, Any]:
        """Full-model FedAvg of each task of the stage over its sites (one run)."""
        model = self._model(ctx)
        if not self.fresh_backbone:
            self.fresh_backbone = self._backbone(model)
        initial = {}
        for task in plan_.trained_tasks:
            start = self.start_skill(task, ctx)
            model.load_skill_state_dict(task, start)
            self._load_backbone(model, self.backbones.get(task, self.fresh_backbone))
            initial[task] = as_arrays(plan_state(model, task, Plan.FULL))
        sites = [s for t in plan_.trained_tasks for s in ctx.task_sites(t, plan_.index)]
        result = ctx.federate(FederatedJob(sites, job_dir(ctx, plan_), plan=Plan.FULL.value,
                                           initial=initial))
        curves, downs, ups = {}, [], []
        for task in plan_.trained_tasks:
            self._load_backbone(model, self.fresh_backbone)
            load_plan_state(model, task, Plan.FULL, result.states[task])
            self.skills[task] = model.skill_state_dict(task)
            self.backbones[task] = self._backbone(model)
            curves[task] = result.curve(task, metric_of(ctx, task))
            down, up = task_bytes(result.rounds, ctx.task_sites(task, plan_.index))
            downs.append(down)
            ups.append(up)
        self._load_backbone(model, self.fresh_backbone)
        return {"tasks": list(plan_.trained_tasks), "curves": curves,
                "bytes_down_per_site_round": sum(downs) / len(downs),
                "bytes_up_per_site_round": sum(ups) / len(ups)}

    def evaluate(
        self, task: str, plan_: StagePlan, ctx: RunContext
    ) -> dict[str, tuple[float, int]]:
        """The task's own full model."""
        model = self._model(ctx)
        self._load_backbone(model, self.backbones[task])
        try:
            return super().evaluate(task, plan_, ctx)
        finally:
            self._load_backbone(model, self.fresh_backbone)


def task_bytes(rounds: list[dict[str, Any]], sites: list[str]) -> tuple[float, float]:
    """Mean bytes down and up per (site, round) over ``sites`` (the strategy's round records)."""
    downs = [r["sites"][s]["bytes_down"] for r in rounds for s in sites if s in r["sites"]]
    ups = [r["sites"][s]["bytes_up"] for r in rounds for s in sites if s in r["sites"]]
    if not downs:
        raise ValueError(f"no byte counts for sites {sites} in the round records")
    return sum(downs) / len(downs), sum(ups) / len(ups)
