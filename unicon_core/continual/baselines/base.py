"""What every skill-based continual strategy shares: a growing model, its skills, evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from unicon_core.continual.evaluation import EvalSite, evaluate_sites
from unicon_core.continual.expansion import expanded_skill
from unicon_core.continual.runner import RunContext
from unicon_core.continual.stages import StagePlan
from unicon_core.model import UniconModel

Skill = dict[str, torch.Tensor]


def as_tensors(state: dict[str, Any]) -> Skill:
    """A skill as torch tensors (accepts numpy arrays)."""
    return {k: torch.from_numpy(np.asarray(v).copy()) if not isinstance(v, torch.Tensor)
            else v.detach().clone() for k, v in state.items()}


def as_arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state as numpy arrays (what a federated job starts from)."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def job_dir(ctx: RunContext, plan: StagePlan, what: str = "") -> Path:
    """The run folder of one federated job of a stage."""
    return ctx.run_dir / (f"stage{plan.index}_{plan.stage.name}" + (f"_{what}" if what else ""))


class SkillStrategy:
    """Keeps one skill per task and one model holding every task seen so far.

    The model grows (``add_task``) as tasks join and is built once per run, so evaluating a task
    after later stages runs the very model later tasks were added to.
    """

    name = "skills"

    def __init__(self) -> None:
        self.model: UniconModel | None = None
        self.skills: dict[str, Skill] = {}
        self.initial: dict[str, Skill] = {}

    def _model(self, ctx: RunContext) -> UniconModel:
        if self.model is None:
            self.model = UniconModel(ctx.backbone, seed=ctx.seed)
        return self.model

    def ensure_task(self, task: str, ctx: RunContext) -> UniconModel:
        """The model, with ``task`` added if new."""
        model = self._model(ctx)
        if task not in model.specs:
            model.add_task(ctx.specs[task])
        return model

    def start_skill(self, task: str, ctx: RunContext) -> Skill:
        """Where ``task`` starts this stage: expansion, its last skill, or fresh."""
        model = self.ensure_task(task, ctx)
        if task in self.initial:
            return self.initial.pop(task)
        if task in self.skills:
            return self.skills[task]
        return model.skill_state_dict(task)

    def init_from(self, target: str, source: str, ctx: RunContext) -> None:
        """``target`` starts from ``source``'s skill (adapter, head; grown stem/skip channels)."""
        model = self.ensure_task(target, ctx)
        self.initial[target] = expanded_skill(model, self.skills[source], target)

    def eval_sites(self, task: str, plan: StagePlan, ctx: RunContext) -> list[EvalSite]:
        """The test split of every site of ``task`` that has joined so far."""
        return [EvalSite(s, ctx.sites[s].dataset("test", train=False))
                for s in ctx.task_sites(task, plan.index)]

    def evaluate(self, task: str, plan: StagePlan, ctx: RunContext) -> dict[str, tuple[float, int]]:
        """Load ``task``'s skill into the shared model and test it on its sites."""
        model = self.ensure_task(task, ctx)
        model.load_skill_state_dict(task, self.skills[task])
        return evaluate_sites(model, task, self.eval_sites(task, plan, ctx), ctx.cfg.batch_size)


def metric_of(ctx: RunContext, task: str) -> str:
    """The primary metric of ``task``."""
    from unicon_core.metrics import PRIMARY_METRIC

    return PRIMARY_METRIC[ctx.specs[task].kind]
