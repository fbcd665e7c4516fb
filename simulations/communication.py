"""Bytes per site and round: a task's skill vs the full model, on the product's messages.

Both columns measure the messages the product builds (no training): the train and evaluate
instructions of :class:`~server.strategies.PerTaskFedAvg` down, a training reply (the plan's
tensors, held-out metrics, info) and an evaluation reply built by the site runner up, each
through the accounting function the server uses; the skill column with plan ``skill``, the
full column with plan ``full`` (backbone + skill), for the default and a larger backbone.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from unicon_core.config import BackboneConfig, TaskSpec
from unicon_core.model import UniconModel
from unicon_core.training.plans import Plan, plan_state


def round_bytes(model: UniconModel, task: str, plan: str = Plan.SKILL.value) -> dict[str, int]:
    """Bytes one site receives (both instructions) and sends (both replies) in one round."""
    from flwr.app import ConfigRecord, RecordDict

    from client.site_runner import answering, info_record, metric_record, skill_record
    from server.strategies.per_task_fedavg import PerTaskFedAvg, SiteNode
    from unicon_core.federation.aggregation import prefix_task
    from unicon_core.federation.protocol import RecordKey, Status
    from unicon_core.metrics import PRIMARY_METRIC
    from unicon_flower.accounting import content_bytes
    from unicon_flower.inprocess import act_as_server_app
    from unicon_flower.records import arrays_to_record

    act_as_server_app()  # the strategy builds real Messages
    state = {k: v.numpy() for k, v in plan_state(model, task, plan).items()}
    arrays = arrays_to_record(prefix_task(task, state))
    strategy = PerTaskFedAvg([SiteNode(1, "site", task)], foundation_hash=model.foundation_hash)
    down = sum(content_bytes(m.content) for m in [
        *strategy.configure_train(1, arrays, ConfigRecord(), None),  # type: ignore[arg-type]
        *strategy.configure_evaluate(1, arrays, ConfigRecord(), None)])  # type: ignore[arg-type]
    site: Any = SimpleNamespace(name="site", task_spec=model.spec(task), synthetic=False)
    metric = PRIMARY_METRIC[model.spec(task).kind]
    held_out = {metric: 0.5, "loss": 0.5}
    train_metrics = metric_record(held_out, 100, prefix="val_")
    train_metrics["train_loss"], train_metrics["steps"] = 0.5, 10
    trained = RecordDict({
        RecordKey.SKILL.value: skill_record(model, task, None, plan),
        RecordKey.METRICS.value: train_metrics,
        RecordKey.INFO.value: answering(info_record(site, model, Status.TRAINED), 1)})
    evaluated = RecordDict({
        RecordKey.METRICS.value: metric_record(held_out, 10),
        RecordKey.INFO.value: answering(info_record(site, model, Status.EVALUATED), 1)})
    return {"bytes_down": down, "bytes_up": content_bytes(trained) + content_bytes(evaluated)}


def bytes_table(specs: dict[str, TaskSpec], backbones: dict[str, BackboneConfig]) -> list[dict]:
    """One row per (backbone, task): skill and full-model bytes per site and round."""
    rows: list[dict[str, Any]] = []
    for label, cfg in backbones.items():
        model = UniconModel(cfg, seed=0)
        for task, spec in specs.items():
            model.add_task(spec)
            skill = round_bytes(model, task, Plan.SKILL.value)
            full = round_bytes(model, task, Plan.FULL.value)
            s = skill["bytes_down"] + skill["bytes_up"]
            f = full["bytes_down"] + full["bytes_up"]
            rows.append({"backbone": label, "task": task, "skill_bytes": s, "full_bytes": f,
                         "ratio": s / f,
                         "skill_params": sum(p.numel() for p in model.skill_parameters(task)
                                             .values()),
                         "backbone_params": sum(t.numel() for t in
                                                model.backbone_state_dict().values())})
    return rows
