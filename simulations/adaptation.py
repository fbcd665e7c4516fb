"""Adaptation strategies for one task: each federates its plan of what trains, same budget.

Each strategy is a plan (:mod:`unicon_core.training.plans`) run on the product's federation
(the run context's engine, research sites); the final value is measured on the sites' test
split with the final global state, the curve is the federation's own per-round evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unicon_core.config import BackboneConfig
from unicon_core.continual.baselines import ADAPTATION_STRATEGIES
from unicon_core.continual.engine import FederatedJob
from unicon_core.continual.evaluation import EvalSite, evaluate_sites, weighted_value
from unicon_core.continual.runner import RunContext
from unicon_core.metrics import PRIMARY_METRIC
from unicon_core.model import UniconModel
from unicon_core.training.plans import load_plan_state


def run_adaptation(
    ctx: RunContext, task: str, backbone: BackboneConfig,
    names: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per named strategy (all unless fewer are named): final held-out value, per-round curve,
    bytes per site and round."""
    names = list(ADAPTATION_STRATEGIES) if names is None else list(names)
    unknown = sorted(set(names) - set(ADAPTATION_STRATEGIES))
    if unknown:
        raise ValueError(f"unknown adaptation strategies {unknown}; "
                         f"known: {sorted(ADAPTATION_STRATEGIES)}")
    sites = [s for s in ctx.sites.values() if s.task_spec.name == task]
    if not sites:
        raise ValueError(f"no site serves the adaptation task {task!r}")
    metric = PRIMARY_METRIC[sites[0].task_spec.kind]
    evals = [EvalSite(s.name, s.dataset("test")) for s in sites]
    out = {}
    for name in names:
        plan = ADAPTATION_STRATEGIES[name]
        result = ctx.federate(FederatedJob([s.name for s in sites],
                                           ctx.run_dir / f"adaptation_{name}", plan=plan.value))
        model = UniconModel(backbone, seed=ctx.seed)
        model.add_task(sites[0].task_spec)
        load_plan_state(model, task, plan, result.states[task])
        out[name] = {"value": weighted_value(evaluate_sites(model, task, evals,
                                                            ctx.cfg.batch_size)),
                     "curve": result.curve(task, metric),
                     "bytes_per_site_round": result.bytes_down_per_site_round
                     + result.bytes_up_per_site_round,
                     "wall_s": result.wall_s}
    return out
