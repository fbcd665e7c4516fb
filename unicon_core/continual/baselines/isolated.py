"""unicon's method: one isolated skill per task, trained by per-task FedAvg on the real path.

Each stage runs the real ServerApp/ClientApp (through the run context's federated engine) on the
sites of the tasks that train at that stage; every other task's skill is untouched, so its
held-out value cannot change.
"""

from __future__ import annotations

from typing import Any

from unicon_core.continual.baselines.base import (
    SkillStrategy,
    as_arrays,
    as_tensors,
    job_dir,
    metric_of,
)
from unicon_core.continual.engine import FederatedJob
from unicon_core.continual.runner import RunContext
from unicon_core.continual.stages import StagePlan


class IsolatedSkills(SkillStrategy):
    """Per-task skills, federated per task, never touched by other tasks."""

    name = "isolated"

    def stage_sites(self, plan: StagePlan, ctx: RunContext) -> list[str]:
        """Every site (so far) of every task training at this stage."""
        return [s for t in plan.trained_tasks for s in ctx.task_sites(t, plan.index)]

    def train_stage(self, plan: StagePlan, ctx: RunContext) -> dict[str, Any]:
        """One federated run over the stage's sites, from each task's starting skill."""
        initial = {t: as_arrays(self.start_skill(t, ctx)) for t in plan.trained_tasks}
        sites = self.stage_sites(plan, ctx)
        result = ctx.federate(FederatedJob(sites, job_dir(ctx, plan), initial=initial))
        for task in plan.trained_tasks:
            self.skills[task] = as_tensors(result.states[task])
        return {"sites": sites, "tasks": list(plan.trained_tasks),
                "bytes_down_per_site_round": result.bytes_down_per_site_round,
                "bytes_up_per_site_round": result.bytes_up_per_site_round,
                "curves": {t: result.curve(t, metric_of(ctx, t)) for t in plan.trained_tasks}}
