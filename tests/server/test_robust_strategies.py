"""Validation inside the per-task strategies, robust rules, dropouts and the per-task minimum."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.strategies import PerTaskFedAvg, PerTaskMedian, PerTaskTrimmedMean
from server.strategies.per_task_fedavg import SiteNode
from unicon_core.federation.aggregation import prefix_task, slice_task
from unicon_core.federation.config import STRATEGIES
from unicon_core.federation.protocol import InfoKey, RecordKey, Status
from unicon_core.hydra_config import load_settings

HASH = "f" * 64
SHAPES = {"adapter.x": (2, 3), "head.w": (4,)}
FIVE = [SiteNode(i, f"s{i}", "cls") for i in range(1, 6)]


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _start(fill: float = 0.0) -> ArrayRecord:
    skill = {k: np.full(s, fill, np.float32) for k, s in SHAPES.items()}
    return ArrayRecord({k: Array(v) for k, v in prefix_task("cls", skill).items()})


def _reply(instruction: Message, node: SiteNode, skill: dict[str, np.ndarray] | None,
           n: Any = 10) -> Message:
    content: dict[str, Any] = {
        RecordKey.METRICS.value: MetricRecord({"num-examples": n}),
        RecordKey.INFO.value: ConfigRecord({
            InfoKey.SITE.value: node.site, InfoKey.TASK.value: node.task,
            InfoKey.FOUNDATION_HASH.value: HASH, InfoKey.STATUS.value: Status.TRAINED.value,
            InfoKey.ROUND.value: instruction.content["config"]["server-round"]}),
    }
    if skill is not None:
        content[RecordKey.SKILL.value] = ArrayRecord({k: Array(v) for k, v in skill.items()})
    reply = Message(RecordDict(content), reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node.node_id
    return reply


def _round(strategy: PerTaskFedAvg, values: dict[int, Any]) -> dict[str, np.ndarray]:
    """One training round where node i replies with every value = values[i] (or a dict)."""
    messages = {m.metadata.dst_node_id: m
                for m in strategy.configure_train(1, _start(), ConfigRecord(), None)}
    replies = []
    for node in strategy.nodes.values():
        if node.node_id not in values:
            continue  # a site that died: no reply at all
        value = values[node.node_id]
        skill = value if isinstance(value, dict) else {
            k: np.full(s, value, np.float32) for k, s in SHAPES.items()}
        replies.append(_reply(messages[node.node_id], node, skill))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return slice_task({k: a.numpy() for k, a in arrays.items()}, "cls")


@pytest.mark.parametrize(
    ("cls", "kwargs"), [(PerTaskMedian, {}), (PerTaskTrimmedMean, {"trim_fraction": 0.2})]
)
def test_robust_strategies_ignore_one_poisoned_site(cls: type, kwargs: dict) -> None:
    # Prepare: honest sites move the skill by +1 (+- a little), one site by -10 (sign flip, x10)
    honest = {1: 0.9, 2: 1.0, 3: 1.1, 4: 1.05}
    # the round's own norm bound off: this test is about the aggregation rule alone
    robust = cls(FIVE, foundation_hash=HASH, update_norm_factor=None, **kwargs)
    fedavg = PerTaskFedAvg(FIVE, foundation_hash=HASH, update_norm_factor=None)

    # Execute
    got = _round(robust, {**honest, 5: -10.0})
    mean = _round(fedavg, {**honest, 5: -10.0})

    # Assert
    assert all(float(v.min()) >= 0.9 and float(v.max()) <= 1.1 for v in got.values())
    assert all(float(v.max()) < 0 for v in mean.values())


def test_malformed_updates_are_rejected_with_site_and_reason_and_the_rest_aggregated() -> None:
    # Prepare: s1, s2 honest; s3 NaN; s4 wrong shape; s5 huge update (norm bound 100)
    strategy = PerTaskFedAvg(FIVE, foundation_hash=HASH, max_update_norm=100.0)
    nan = {k: np.full(s, np.nan, np.float32) for k, s in SHAPES.items()}
    shape = {"adapter.x": np.ones((3, 3), np.float32), "head.w": np.ones(4, np.float32)}

    # Execute
    got = _round(strategy, {1: 1.0, 2: 3.0, 3: nan, 4: shape, 5: 1000.0})

    # Assert
    assert all(np.allclose(v, 2.0) for v in got.values())
    sites = strategy._record["sites"]
    assert sites["s3"]["status"] == "rejected" and "non-finite" in sites["s3"]["reason"]
    assert "shape" in sites["s4"]["reason"]
    assert "exceeds the bound" in sites["s5"]["reason"]
    assert strategy._record["tasks"]["cls"]["sites_aggregated"] == 2


def test_a_site_that_sends_no_reply_is_logged_and_asked_again_next_round() -> None:
    # Prepare
    strategy = PerTaskFedAvg(FIVE, foundation_hash=HASH)

    # Execute: s5 dies during round 1
    got = _round(strategy, {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0})
    record = strategy._record
    asked_next = [m.metadata.dst_node_id for m in
                  strategy.configure_train(2, _start(), ConfigRecord(), None)]

    # Assert: the round completed with the other four; s5 is logged and asked again
    assert all(np.allclose(v, 1.0) for v in got.values())
    assert record["sites"]["s5"]["status"] == "no-reply"
    assert "timeout" in record["sites"]["s5"]["reason"]
    assert record["tasks"]["cls"]["sites_aggregated"] == 4
    assert 5 in asked_next


def test_a_task_below_its_minimum_keeps_its_skill() -> None:
    # Prepare: 3 valid updates needed, only 2 arrive
    strategy = PerTaskFedAvg(FIVE, foundation_hash=HASH, min_sites_per_task=3)

    # Execute
    got = _round(strategy, {1: 5.0, 2: 5.0})

    # Assert
    assert all(np.array_equal(v, np.zeros_like(v)) for v in got.values())
    assert strategy._record["tasks"]["cls"]["sites_aggregated"] == 0


def test_a_lying_example_count_is_rejected() -> None:
    strategy = PerTaskFedAvg(FIVE[:2], foundation_hash=HASH)
    messages = {m.metadata.dst_node_id: m
                for m in strategy.configure_train(1, _start(), ConfigRecord(), None)}
    skill = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
    replies = [_reply(messages[1], FIVE[0], skill, n=float("nan")),
               _reply(messages[2], FIVE[1], skill, n=-3)]
    strategy.aggregate_train(1, replies)
    assert all(strategy._record["sites"][s]["status"] == "rejected" for s in ("s1", "s2"))


@pytest.mark.parametrize(
    ("group", "name"),
    [("fedavg", "per_task_fedavg"), ("median", "per_task_median"),
     ("trimmed_mean", "per_task_trimmed_mean")],
)
def test_strategy_is_chosen_in_config(group: str, name: str) -> None:
    settings = load_settings([f"strategy={group}", "strategy.max_update_norm=5.0"])
    assert settings.strategy.name == name and name in STRATEGIES
    assert settings.strategy.max_update_norm == 5.0
    assert settings.strategy.options() == ({"trim_fraction": 0.2} if group == "trimmed_mean"
                                           else {})


def test_trimmed_mean_validates_its_fraction() -> None:
    with pytest.raises(ValueError, match="trim_fraction"):
        PerTaskTrimmedMean(FIVE, foundation_hash=HASH, trim_fraction=0.6)
    with pytest.raises(ValueError, match="min_sites_per_task"):
        PerTaskFedAvg(FIVE, foundation_hash=HASH, min_sites_per_task=0)
