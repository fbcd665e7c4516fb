"""The federated engine of the continual strategies: their jobs on the product's federation.

:func:`federated_engine` runs a :class:`~unicon_core.continual.engine.FederatedJob` through
:func:`unicon_flower.runner.run_in_process` (the real ServerApp strategy and ClientApp, in
process) with the run context's seed and budget; :func:`make_context` is
:func:`unicon_core.continual.runner.make_context` with this engine. Sites of a job that needs
more than a skill (a research plan or hooks) run as research sites.
"""

from __future__ import annotations

from typing import Any

from unicon_core.continual.engine import FederatedJob, FederatedOutcome
from unicon_core.continual.runner import RunContext
from unicon_core.continual.runner import make_context as core_make_context
from unicon_flower.runner import RunSettings, run_in_process


def job_settings(ctx: RunContext, job: FederatedJob) -> RunSettings:
    """The run's typed settings: the context's seed and budget, the job's plan and rounds."""
    return RunSettings(
        base=tuple(ctx.overrides), seed=ctx.seed,
        rounds=job.rounds if job.rounds is not None else ctx.cfg.rounds,
        local_steps=job.local_steps if job.local_steps is not None else ctx.cfg.local_steps,
        batch_size=ctx.cfg.batch_size, lr=ctx.cfg.lr, plan=job.plan, evaluate=job.evaluate,
        eval_split=None if job.eval_split == "test" else job.eval_split,
    )


def federated_engine(ctx: RunContext, job: FederatedJob) -> FederatedOutcome:
    """Run ``job`` on the product's federation, in process."""
    from client.site_runner import SiteHooks

    hooks = None
    if job.views or job.model or job.local_loss or job.on_site:
        views = dict(job.views)
        model = job.model
        hooks = SiteHooks(
            site_view=(lambda site: views[site.name](site) if site.name in views else site)
            if views else None,
            model=(lambda site: model(site.task_spec.name)) if model is not None else None,
            local_loss=job.local_loss, on_site=job.on_site,
        )
    result = run_in_process([ctx.cfg.site_dir(s) for s in job.sites], job.run_dir,
                            job_settings(ctx, job), initial=job.initial,
                            research=job.research, hooks=hooks)
    return FederatedOutcome(states=result.states, rounds=result.rounds, results=result.results,
                            run_dir=result.run_dir, wall_s=result.wall_s)


def make_context(*args: Any, **kwargs: Any) -> RunContext:
    """:func:`unicon_core.continual.runner.make_context` with the federated engine."""
    kwargs.setdefault("engine", federated_engine)
    return core_make_context(*args, **kwargs)

