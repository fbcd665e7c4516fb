"""Each site alone: a site trains its own skill on its own data and is tested on its own data.

Same skill, seed, rounds and local steps per round as a site of the federation, without
averaging: one federated run per site, with that site as its only node. A task's value is the
example-weighted mean of its sites' own values. A site joins once: its skill trains at the stage
it joins and never again. A site has no other site's skill, so modality expansion does not
apply: an expanded task starts fresh here.
"""

from __future__ import annotations

from typing import Any

from unicon_core.continual.baselines.base import (
    Skill,
    SkillStrategy,
    as_arrays,
    as_tensors,
    job_dir,
    metric_of,
)
from unicon_core.continual.engine import FederatedJob
from unicon_core.continual.evaluation import evaluate_sites
from unicon_core.continual.runner import RunContext
from unicon_core.continual.stages import StagePlan


class LocalOnly(SkillStrategy):
    """Per-site skills, no communication."""

    name = "local_only"

    def __init__(self) -> None:
        super().__init__()
        self.site_skills: dict[str, Skill] = {}

    def init_from(self, target: str, source: str, ctx: RunContext) -> None:
        """No other site's skill to start from: the expanded task starts fresh."""

    def train_stage(self, plan: StagePlan, ctx: RunContext) -> dict[str, Any]:
        """Each joining site trains its task's skill from the fresh initialisation."""
        curves: dict[str, list[float | None]] = {}
        for site, task in plan.site_tasks.items():
            model = self.ensure_task(task, ctx)
            fresh = self.skills.setdefault(task, model.skill_state_dict(task))
            result = ctx.federate(FederatedJob([site], job_dir(ctx, plan, site),
                                               initial={task: as_arrays(fresh)}))
            self.site_skills[site] = as_tensors(result.states[task])
            curves[site] = result.curve(task, metric_of(ctx, task))
        return {"tasks": list(plan.trained_tasks), "curves": curves}

    def evaluate(self, task: str, plan: StagePlan, ctx: RunContext) -> dict[str, tuple[float, int]]:
        """Every site of the task with its own skill."""
        model = self.ensure_task(task, ctx)
        out = {}
        for site in self.eval_sites(task, plan, ctx):
            model.load_skill_state_dict(task, self.site_skills[site.name])
            out.update(evaluate_sites(model, task, [site], ctx.cfg.batch_size))
        return out
