"""The communication baseline: full-model FedAvg per task (backbone + stem + head + adapter).

Every round each site receives and returns the whole model of its task; the backbone is trained
too, so each task ends with its own backbone (a task's value is measured with its own model).
Bytes are measured on messages shaped like the real path's, with the same accounting function.
"""

from __future__ import annotations

from typing import Any

from unicon_core.continual.baselines.base import Skill, SkillStrategy
from unicon_core.continual.fedloop import (
    Client,
    ParamPlan,
    backbone_names,
    fedavg_loop,
    skill_names,
)
from unicon_core.continual.runner import RunContext
from unicon_core.continual.stages import StagePlan
from unicon_core.model import UniconModel


def plan(model: UniconModel, task: str, r: int, rounds: int) -> ParamPlan:
    """Everything the task's model has: backbone weights and the task's skill."""
    return ParamPlan(backbone_names(model) + skill_names(model, task))


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
        """Full-model FedAvg of each task of the stage over its sites."""
        model = self._model(ctx)
        if not self.fresh_backbone:
            self.fresh_backbone = self._backbone(model)
        curves, downs, ups = {}, [], []
        for task in plan_.trained_tasks:
            start = self.start_skill(task, ctx)
            model.load_skill_state_dict(task, start)
            self._load_backbone(model, self.backbones.get(task, self.fresh_backbone))
            clients = [Client(s, ctx.sites[s].dataset("train", train=True), ctx.cfg.local_steps,
                              ctx.sites[s].synthetic) for s in ctx.task_sites(task, plan_.index)]
            result = fedavg_loop(model, task, clients, self.eval_sites(task, plan_, ctx), plan,
                                 rounds=ctx.cfg.rounds, train=ctx.train)
            self.skills[task] = model.skill_state_dict(task)
            self.backbones[task] = self._backbone(model)
            curves[task] = [r.get("value") for r in result.rounds]
            downs.append(result.bytes_down_per_site_round)
            ups.append(result.bytes_up_per_site_round)
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
