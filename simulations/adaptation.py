"""Adaptation strategies for one task: FedAvg of what each strategy trains, same budget."""

from __future__ import annotations

from typing import Any

from unicon_core.config import BackboneConfig
from unicon_core.continual.baselines import ADAPTATION_STRATEGIES
from unicon_core.continual.fedloop import Client, EvalSite, fedavg_loop
from unicon_core.continual.runner import RunContext
from unicon_core.model import UniconModel


def run_adaptation(
    ctx: RunContext, task: str, backbone: BackboneConfig
) -> dict[str, dict[str, Any]]:
    """Per strategy: final held-out value, trained tensors, bytes per site and round."""
    sites = [s for s in ctx.sites.values() if s.task_spec.name == task]
    if not sites:
        raise ValueError(f"no site serves the adaptation task {task!r}")
    out = {}
    for name, plan in ADAPTATION_STRATEGIES.items():
        model = UniconModel(backbone, seed=ctx.seed)
        model.add_task(sites[0].task_spec)
        clients = [Client(s.name, s.dataset("train", train=True), ctx.cfg.local_steps,
                          s.synthetic) for s in sites]
        evals = [EvalSite(s.name, s.dataset("test")) for s in sites]
        result = fedavg_loop(model, task, clients, evals, plan, rounds=ctx.cfg.rounds,
                             train=ctx.train)
        out[name] = {"value": result.rounds[-1]["value"],
                     "curve": [r["value"] for r in result.rounds],
                     "bytes_per_site_round": result.bytes_down_per_site_round
                     + result.bytes_up_per_site_round,
                     "wall_s": result.wall_s}
    return out
