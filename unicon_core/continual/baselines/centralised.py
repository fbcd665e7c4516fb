"""The upper bound: each task's sites pooled in one place, trained as one client.

Same skill, seed and rounds; per round the pooled client runs ``local_steps x number of
sites`` steps, so it sees as many training examples as the federation does in that round.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import ConcatDataset

from unicon_core.continual.baselines.base import SkillStrategy
from unicon_core.continual.baselines.lora import plan as lora_plan
from unicon_core.continual.fedloop import Client, fedavg_loop
from unicon_core.continual.runner import RunContext
from unicon_core.continual.stages import StagePlan


class Centralised(SkillStrategy):
    """Pooled training of each task's skill (no federation)."""

    name = "centralised"

    def train_stage(self, plan: StagePlan, ctx: RunContext) -> dict[str, Any]:
        """Train each task of the stage on the union of its sites' train splits."""
        curves = {}
        for task in plan.trained_tasks:
            start = self.start_skill(task, ctx)
            model = self.ensure_task(task, ctx)
            model.load_skill_state_dict(task, start)
            sites = ctx.task_sites(task, plan.index)
            pooled = Client("pooled", ConcatDataset(
                [ctx.sites[s].dataset("train", train=True) for s in sites]),
                steps=ctx.cfg.local_steps * len(sites))
            result = fedavg_loop(model, task, [pooled], self.eval_sites(task, plan, ctx),
                                 lora_plan, rounds=ctx.cfg.rounds, train=ctx.train)
            self.skills[task] = model.skill_state_dict(task)
            curves[task] = [r.get("value") for r in result.rounds]
        return {"tasks": list(plan.trained_tasks), "curves": curves}
