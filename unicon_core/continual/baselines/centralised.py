"""The upper bound: each task's sites pooled in one place, trained as one client.

One federated run with one node holding the pooled train data of the task's sites (a pooled
view of them, :func:`~unicon_core.continual.sites.pooled_site`): same skill, seed and rounds;
per round the pooled client runs ``local_steps x number of sites`` steps, so it sees as many
training examples as the federation does in that round.
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
from unicon_core.continual.sites import pooled_site
from unicon_core.continual.stages import StagePlan


class Centralised(SkillStrategy):
    """Pooled training of each task's skill (no federation)."""

    name = "centralised"

    def train_stage(self, plan: StagePlan, ctx: RunContext) -> dict[str, Any]:
        """Train each task of the stage on the union of its sites' train splits."""
        curves = {}
        for task in plan.trained_tasks:
            start = self.start_skill(task, ctx)
            sites = ctx.task_sites(task, plan.index)
            members = [ctx.sites[s] for s in sites]
            result = ctx.federate(FederatedJob(
                [sites[0]], job_dir(ctx, plan, f"{task}_pooled"), initial={task: as_arrays(start)},
                local_steps=ctx.cfg.local_steps * len(sites),
                views={sites[0]: lambda _site, m=members: pooled_site(m)}))
            self.skills[task] = as_tensors(result.states[task])
            curves[task] = result.curve(task, metric_of(ctx, task))
        return {"tasks": list(plan.trained_tasks), "curves": curves}
