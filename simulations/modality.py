"""PET joins CT: CT+PET (expanded from the CT skill, or fresh) vs CT-only, same patients.

All on the CT+PET site(s) (SYNTHETIC phantoms), same budget, tested on their test split:
``ct_zero_shot`` the federated CT skill as it is on the CT channel; ``ct_only`` that skill
fine-tuned on the CT channel (the sites seen through a CT-only view, a research hook);
``ctpet_expanded`` CT+PET started from the CT skill (new stem, PET weights zero);
``ctpet_scratch`` CT+PET from a fresh skill. Every training run is the product's federation
(the run context's engine).
"""

from __future__ import annotations

from typing import Any

from unicon_core.config import BackboneConfig
from unicon_core.continual.baselines.base import as_arrays
from unicon_core.continual.engine import FederatedJob
from unicon_core.continual.evaluation import EvalSite, evaluate_sites, weighted_value
from unicon_core.continual.expansion import ChannelView, expanded_skill
from unicon_core.continual.runner import RunContext
from unicon_core.continual.sites import channel_site
from unicon_core.model import UniconModel


def run_modality(
    ctx: RunContext, ct_task: str, ctpet_task: str, ct_skill: dict[str, Any],
    backbone: BackboneConfig,
) -> dict[str, float]:
    """Dice of the four variants on the CT+PET sites' test split."""
    sites = [s for s in ctx.sites.values() if s.task_spec.name == ctpet_task]
    ct_spec = next(s.task_spec for s in ctx.sites.values() if s.task_spec.name == ct_task)

    def evals(channels: list[int] | None) -> list[EvalSite]:
        return [EvalSite(s.name, _view(s.dataset("test"), channels)) for s in sites]

    out: dict[str, float] = {}
    model = UniconModel(backbone, seed=ctx.seed)
    model.add_task(ct_spec)
    model.add_task(sites[0].task_spec)
    model.load_skill_state_dict(ct_task, ct_skill)
    out["ct_zero_shot"] = weighted_value(
        evaluate_sites(model, ct_task, evals([0]), ctx.cfg.batch_size))
    fresh = model.skill_state_dict(ctpet_task)
    expanded = expanded_skill(model, ct_skill, ctpet_task)
    ct_view = {s.name: (lambda site: channel_site(site, ct_spec, [0])) for s in sites}
    runs: list[tuple[str, str, list[int] | None, dict[str, Any]]] = [
        ("ct_only", ct_task, [0], ct_skill),
        ("ctpet_expanded", ctpet_task, None, expanded),
        ("ctpet_scratch", ctpet_task, None, fresh),
    ]
    for name, task, channels, start in runs:
        result = ctx.federate(FederatedJob(
            [s.name for s in sites], ctx.run_dir / f"modality_{name}",
            initial={task: as_arrays(start)}, evaluate=False,
            views=ct_view if channels is not None else {}))
        model.load_skill_state_dict(task, result.states[task])
        out[name] = weighted_value(
            evaluate_sites(model, task, evals(channels), ctx.cfg.batch_size))
    return out


def _view(data: Any, channels: list[int] | None) -> Any:
    return data if channels is None else ChannelView(data, channels)
