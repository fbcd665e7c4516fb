"""Foundation refinement between stages (issue #15): one backbone, shared and refined by every
stage, with the continual plugins as its retention terms.

Each task of a stage trains its skill **and** the shared backbone by FedAvg over its sites (plan
``full``, on the product's federation; the sites train the strategy's own model, a research
hook, so the plugins see every task); the backbone it ends with is every task's backbone from
then on,
so earlier skills are evaluated on the refined backbone (their BWT is measured, not 0 by
construction). Without plugins this is naive sequential fine-tuning of the foundation; with
``continual.plugins`` (``kd``, ``lwf``, ``ewc``, ...) their loss is added to every local step.
The strategy offers the plugins what they need at the sites: :meth:`fisher` (EWC) and
:meth:`site_features` (MDS).
"""

from __future__ import annotations

from typing import Any

import torch

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
from unicon_core.device import module_device, to_device
from unicon_core.keys import BatchKey
from unicon_core.training.plans import Plan, backbone_names, load_plan_state, plan_state


def loop_takes_a_regulariser() -> bool:
    """True when ``train_task`` accepts the per-step ``regulariser`` the plugins need."""
    import inspect

    from unicon_core.training import train_task

    return "regulariser" in inspect.signature(train_task).parameters


class RefinedFoundation(SkillStrategy):
    """Sequential federated refinement of a shared backbone, plugins as retention terms."""

    name = "refined"

    def current_model(self, ctx: RunContext) -> Any:
        """The shared model (built on first use): what the plugins snapshot before a stage."""
        return self._model(ctx)

    def train_stage(self, plan: StagePlan, ctx: RunContext) -> dict[str, Any]:
        """Backbone + skill FedAvg of each task of the stage, on the shared backbone."""
        from unicon_core.continual.plugins.base import CapturedLoss, adds_loss

        losses = [p for p in ctx.plugins if adds_loss(p)]
        if losses and not loop_takes_a_regulariser():
            raise RuntimeError("continual plugins need train_task(regulariser=...), which this "
                               "checkout's training loop lacks")
        curves = {}
        for task in plan.trained_tasks:
            start = self.start_skill(task, ctx)
            model = self.ensure_task(task, ctx)
            model.load_skill_state_dict(task, start)
            result = ctx.federate(FederatedJob(
                ctx.task_sites(task, plan.index), job_dir(ctx, plan, task), plan=Plan.FULL.value,
                initial={task: as_arrays(plan_state(model, task, Plan.FULL))},
                model=lambda t: self.ensure_task(t, ctx),
                local_loss=(lambda _site, m, t: CapturedLoss(losses, m, t)) if losses else None,
                on_site=self._at_site(ctx)))
            load_plan_state(model, task, Plan.FULL, result.states[task])
            self.skills[task] = model.skill_state_dict(task)
            curves[task] = result.curve(task, metric_of(ctx, task))
        return {"tasks": list(plan.trained_tasks), "curves": curves}

    @staticmethod
    def _at_site(ctx: RunContext) -> Any:
        """Tell the enabled plugins which site trains next (``None`` without plugins)."""
        if not ctx.plugins:
            return None
        return lambda site: [p.at_site(site) for p in ctx.plugins]

    def retune(self, task: str, plan: StagePlan, ctx: RunContext) -> None:
        """Brief re-tuning of an earlier skill on the current backbone: one round of skill-only
        FedAvg over its sites (backbone frozen); used by the ``realign`` plugin."""
        result = ctx.federate(FederatedJob(
            ctx.task_sites(task, plan.index), job_dir(ctx, plan, f"retune_{task}"),
            initial={task: as_arrays(self.skills[task])}, rounds=1, evaluate=False,
            model=lambda t: self.ensure_task(t, ctx)))
        self.skills[task] = as_tensors(result.states[task])
        self.ensure_task(task, ctx).load_skill_state_dict(task, self.skills[task])

    def fisher(self, plan: StagePlan, ctx: RunContext, batches: int = 2) -> dict[str, Any]:
        """Diagonal Fisher of each trained task's backbone on the stage's train data (per site,
        averaged): what :class:`~unicon_core.continual.plugins.ewc.EWCPlugin` consolidates."""
        from unicon_core.continual.plugins.ewc import fisher_diagonal
        from unicon_core.training import make_loader
        from unicon_core.training.losses import loss_for

        model = self._model(ctx)
        device = module_device(model)
        names = {task: backbone_names(model, task) for task in plan.trained_tasks}
        per_site = []
        for task in plan.trained_tasks:
            loss_fn = loss_for(model.spec(task))
            for site in ctx.task_sites(task, plan.index):
                loader = make_loader(ctx.sites[site].dataset("train", train=False),
                                     ctx.cfg.batch_size, shuffle=False)
                chosen = [b for _, b in zip(range(batches), loader, strict=False)]
                per_site.append(fisher_diagonal(
                    model, names[task], [to_device(b, device) for b in chosen],
                    lambda m, b, t=task, f=loss_fn: f(m(b[BatchKey.INPUT.value], t).float(), b)))
        # each task's backbone (tasks of one stage may run on different modality backbones)
        every = dict.fromkeys(n for task_names in names.values() for n in task_names)
        return {n: torch.stack([f[n] for f in per_site if n in f]).mean(0) for n in every}

    def site_levels(self, plan: StagePlan, ctx: RunContext) -> dict[str, list[torch.Tensor]]:
        """Per-level pooled foundation features of each joining site's train split, on the
        current backbone (what the retrieval memory keeps prototypes of, at the site)."""
        from unicon_core.continual.plugins.base import pooled
        from unicon_core.training import make_loader

        out = {}
        for site, task in plan.site_tasks.items():
            model = self.ensure_task(task, ctx)
            loader = make_loader(ctx.sites[site].dataset("train", train=False),
                                 ctx.cfg.batch_size, shuffle=False)
            device = module_device(model)
            with torch.no_grad():
                per_batch = [[f.cpu() for f in pooled(model.encode(
                    b[BatchKey.INPUT.value].to(device), task))] for b in loader]
            out[site] = [torch.cat(level) for level in zip(*per_batch, strict=True)]
        return out

    def site_features(self, plan: StagePlan, ctx: RunContext) -> dict[str, torch.Tensor]:
        """Pooled last-level foundation features of each joining site's train split (what
        :class:`~unicon_core.continual.plugins.mds.MDSPlugin` selects from, at the site)."""
        return {site: levels[-1] for site, levels in self.site_levels(plan, ctx).items()}
