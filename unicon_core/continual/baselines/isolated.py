"""unicon's method: one isolated skill per task, trained by per-task FedAvg on the real path.

Each stage runs the real ServerApp/ClientApp (in process) on the sites of the tasks that train
at that stage; every other task's skill is untouched, so its held-out value cannot change.
"""

from __future__ import annotations

from typing import Any

from unicon_core.continual.baselines.base import SkillStrategy, as_tensors
from unicon_core.continual.runner import RunContext
from unicon_core.continual.stages import StagePlan


def real_path_overrides(ctx: RunContext) -> list[str]:
    """Hydra overrides giving the real path the run's seed, rounds and local budget."""
    c = ctx.cfg
    return [*ctx.overrides, f"seed={ctx.seed}", f"federation.rounds={c.rounds}",
            f"train.max_steps={c.local_steps}", "train.epochs=10000",
            f"train.batch_size={c.batch_size}", f"train.lr={c.lr}"]


class IsolatedSkills(SkillStrategy):
    """Per-task skills, federated per task, never touched by other tasks."""

    name = "isolated"

    def stage_sites(self, plan: StagePlan, ctx: RunContext) -> list[str]:
        """Every site (so far) of every task training at this stage."""
        return [s for t in plan.trained_tasks for s in ctx.task_sites(t, plan.index)]

    def train_stage(self, plan: StagePlan, ctx: RunContext) -> dict[str, Any]:
        """One federated run over the stage's sites, from each task's starting skill."""
        from unicon_core.continual.federated import run_federated_stage

        initial = {t: {k: v.numpy() for k, v in self.start_skill(t, ctx).items()}
                   for t in plan.trained_tasks}
        sites = self.stage_sites(plan, ctx)
        result = run_federated_stage(
            real_path_overrides(ctx), [ctx.cfg.site_dir(s) for s in sites],
            ctx.run_dir / f"stage{plan.index}_{plan.stage.name}", initial,
        )
        for task in plan.trained_tasks:
            self.skills[task] = as_tensors(result.skills[task])
        comm = result.results["communication"]
        return {"sites": sites, "tasks": list(plan.trained_tasks),
                "bytes_down_per_site_round": comm["bytes_down_per_site_round"],
                "bytes_up_per_site_round": comm["bytes_up_per_site_round"],
                "curves": {t: [r["tasks"].get(t, {}).get(_metric(ctx, t)) for r in result.rounds]
                           for t in plan.trained_tasks}}


def _metric(ctx: RunContext, task: str) -> str:
    from unicon_core.metrics import PRIMARY_METRIC

    return PRIMARY_METRIC[ctx.specs[task].kind]
