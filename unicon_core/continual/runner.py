"""Run a continual experiment: a strategy (template) goes through the stages, plugins observe.

Avalanche's shape: the strategy knows how to train a stage and evaluate a task; cross-cutting
behaviour is a plugin with lifecycle hooks (``before_stage``, ``after_stage``):
:class:`ModalityExpansionPlugin` starts a new task from an earlier task's skill,
:class:`MatrixPlugin` evaluates every task seen so far after every stage (the task x stage
matrix). Nothing here keeps state between runs: a run's state lives in its :class:`RunContext`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from unicon_core.config import BackboneConfig, TaskSpec, TrainConfig
from unicon_core.continual.engine import Engine, FederatedJob, FederatedOutcome
from unicon_core.continual.hooks import Plugin
from unicon_core.continual.matrix import per_task_forgetting, summary
from unicon_core.continual.stages import (
    ContinualConfig,
    StagePlan,
    last_trained,
    plan_stages,
    task_order,
)


@dataclass
class RunContext:
    """Everything one run of one strategy with one seed needs (no globals)."""

    cfg: ContinualConfig
    seed: int
    backbone: BackboneConfig
    run_dir: Path
    sites: dict[str, Any]  # site name -> unicon_core.data.Site
    plans: list[StagePlan]
    overrides: list[str] = field(default_factory=list)  # hydra overrides for the real path
    #: enabled foundation-refinement plugins of this run (set by :func:`run_continual`); a
    #: strategy that refines the foundation adds their loss (``plugins.extra_loss_for``)
    plugins: list[Any] = field(default_factory=list)
    #: the federated engine (the product's ServerApp + ClientApp, set by the Flower layer:
    #: :func:`unicon_flower.continual.make_context`)
    engine: Engine | None = None

    @property
    def train(self) -> TrainConfig:
        """Local training of one site in one round: ``local_steps`` steps exactly."""
        return TrainConfig(epochs=10_000, max_steps=self.cfg.local_steps,
                           batch_size=self.cfg.batch_size, lr=self.cfg.lr, seed=self.seed,
                           progress=False)

    @property
    def specs(self) -> dict[str, TaskSpec]:
        """Task name -> spec, from the site folders."""
        return {s.task_spec.name: s.task_spec for s in self.sites.values()}

    def federate(self, job: FederatedJob) -> FederatedOutcome:
        """Run ``job`` on the federated engine (an error naming the fix without one)."""
        if self.engine is None:
            raise RuntimeError("this run context has no federated engine: build it with "
                               "unicon_flower.continual.make_context")
        return self.engine(self, job)

    def task_sites(self, task: str, upto: int) -> list[str]:
        """Sites serving ``task`` that joined at stage ``upto`` or before (stage order)."""
        return [s for p in self.plans[: upto + 1] for s, t in p.site_tasks.items() if t == task]


class Strategy(Protocol):
    """How a method trains the tasks of a stage and evaluates a task."""

    name: str

    def train_stage(self, plan: StagePlan, ctx: RunContext) -> dict[str, Any]:
        """Train the stage's tasks; returns a log (bytes, wall time, ...)."""
        ...

    def evaluate(self, task: str, plan: StagePlan, ctx: RunContext) -> dict[str, tuple[float, int]]:
        """``site -> (primary metric, examples)`` on the test split of ``task``'s sites so far."""
        ...

    def init_from(self, target: str, source: str, ctx: RunContext) -> None:
        """Start ``target``'s skill from ``source``'s (modality expansion)."""
        ...


class ModalityExpansionPlugin(Plugin):
    """A task gaining a modality starts from the skill of the task it extends."""

    def before_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Initialise each ``expand`` target from its source."""
        for target, source in plan.stage.expand.items():
            strategy.init_from(target, source, ctx)


class MatrixPlugin(Plugin):
    """Evaluates every task seen so far after every stage: the task x stage matrix."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.columns: list[dict[str, float]] = []
        self.per_site: list[dict[str, dict[str, float]]] = []

    def after_stage(self, strategy: Strategy, plan: StagePlan, ctx: RunContext) -> None:
        """Fill the column of this stage."""
        from unicon_core.continual.evaluation import weighted_value

        self.order += [t for t in plan.new_tasks if t not in self.order]
        column, sites = {}, {}
        for task in self.order:
            per_site = strategy.evaluate(task, plan, ctx)
            column[task] = weighted_value(per_site)
            sites[task] = {s: v for s, (v, _) in per_site.items()}
        self.columns.append(column)
        self.per_site.append(sites)

    def matrix(self) -> list[list[float]]:
        """Rows: tasks in joining order; columns: stages (NaN before a task joined)."""
        return [[c.get(t, math.nan) for c in self.columns] for t in self.order]


@dataclass
class ContinualResult:
    """What one run produced (JSON-ready through :meth:`to_dict`)."""

    strategy: str
    seed: int
    stages: list[str]
    order: list[str]
    matrix: list[list[float]]
    trained: list[int]
    per_site: list[dict[str, dict[str, float]]]
    logs: list[dict[str, Any]]
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        """``order``/``matrix``/``avg``/``bwt``/``forgetting`` plus details."""
        return {"strategy": self.strategy, "seed": self.seed, "stages": self.stages,
                "order": self.order, "matrix": self.matrix, "trained": self.trained,
                **summary(self.matrix, self.trained),
                "forgetting_per_task": dict(zip(
                    self.order, per_task_forgetting(self.matrix, self.trained), strict=True)),
                "per_site": self.per_site, "logs": self.logs, "wall_s": self.wall_s}


def open_sites(cfg: ContinualConfig, seed: int) -> dict[str, Any]:
    """Open every site named by a stage (validated once per process, see open_site_cached)."""
    from unicon_core.data.site import open_site_cached

    return {s: open_site_cached(cfg.site_dir(s), seed=seed) for st in cfg.stages for s in st.sites}


def make_context(
    cfg: ContinualConfig, seed: int, backbone: BackboneConfig, run_dir: Path,
    overrides: list[str] | None = None, sites: dict[str, Any] | None = None,
    engine: Engine | None = None,
) -> RunContext:
    """A run context with its sites opened and its stages planned (``engine``: the federated
    engine its strategies train through)."""
    sites = sites if sites is not None else open_sites(cfg, seed)
    plans = plan_stages(cfg, {n: s.task_spec.name for n, s in sites.items()})
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(cfg, seed, backbone, run_dir, sites, plans, list(overrides or []),
                      engine=engine)


def run_continual(
    strategy: Strategy, ctx: RunContext, plugins: list[Plugin] | None = None
) -> ContinualResult:
    """Go through the stages with ``strategy``; returns the matrix and logs.

    ``plugins`` default to ``ctx.cfg.plugins`` (empty by default: nothing added). Enabled
    foundation-refinement plugins are also handed to the strategy as ``ctx.plugins``.
    """
    from unicon_core.continual.plugins import ContinualPlugin, build_plugins

    start = time.perf_counter()
    if plugins is None:
        plugins = list(build_plugins(ctx.cfg.plugins, ctx.cfg.plugin_options))
    ctx.plugins = [p for p in plugins if isinstance(p, ContinualPlugin) and p.enabled]
    matrix = MatrixPlugin()
    hooks = [ModalityExpansionPlugin(), *plugins, matrix]
    logs = []
    for plan in ctx.plans:
        for hook in hooks:
            hook.before_stage(strategy, plan, ctx)
        t0 = time.perf_counter()
        log = strategy.train_stage(plan, ctx)
        log.update(stage=plan.stage.name, train_s=time.perf_counter() - t0)
        for hook in hooks:
            hook.after_stage(strategy, plan, ctx)
        logs.append(log)
    trained = last_trained(ctx.plans)
    order = task_order(ctx.plans)
    return ContinualResult(
        strategy=strategy.name, seed=ctx.seed, stages=[p.stage.name for p in ctx.plans],
        order=order, matrix=matrix.matrix(), trained=[trained[t] for t in order],
        per_site=matrix.per_site, logs=logs, wall_s=time.perf_counter() - start,
    )
