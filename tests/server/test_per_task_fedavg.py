"""PerTaskFedAvg: each site gets only its task's slice; replies are averaged per task."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.strategies.per_task_fedavg import PerTaskFedAvg, SiteNode
from unicon_core.federation.aggregation import prefix_task, slice_task
from unicon_core.federation.protocol import InfoKey, RecordKey, Status

HASH = "f" * 64
NODES = [SiteNode(1, "a", "cls"), SiteNode(2, "b", "cls"), SiteNode(3, "c", "surv")]
SHAPES = {
    "cls": {"adapter.x": (2, 3), "head.w": (4,)},
    "surv": {"adapter.x": (2, 3), "stem.s": (5,)},
}


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _union(fill: float = 0.0) -> dict[str, np.ndarray]:
    union: dict[str, np.ndarray] = {}
    for task, shapes in SHAPES.items():
        skill = {k: np.full(s, fill, np.float32) for k, s in shapes.items()}
        union.update(prefix_task(task, skill))
    return union


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _reply(instruction: Message, node: SiteNode, skill: dict[str, np.ndarray] | None,
           n: int, status: Status = Status.TRAINED, foundation: str = HASH) -> Message:
    content: dict[str, Any] = {
        RecordKey.METRICS.value: MetricRecord({"num-examples": n, "train_loss": float(n)}),
        RecordKey.INFO.value: ConfigRecord({
            InfoKey.SITE.value: node.site, InfoKey.TASK.value: node.task,
            InfoKey.FOUNDATION_HASH.value: foundation, InfoKey.STATUS.value: status.value,
            InfoKey.ROUND.value: instruction.content["config"]["server-round"]}),
    }
    if skill is not None:
        content[RecordKey.SKILL.value] = _record(skill)
    reply = Message(RecordDict(content), reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node.node_id
    return reply


def test_each_site_receives_only_its_tasks_slice() -> None:
    # Prepare
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH)

    # Execute
    messages = list(strategy.configure_train(1, _record(_union()), ConfigRecord(), grid=None))

    # Assert
    assert len(messages) == 3
    for msg in messages:
        node = next(n for n in NODES if n.node_id == msg.metadata.dst_node_id)
        assert set(msg.content[RecordKey.SKILL.value].keys()) == set(SHAPES[node.task])
        config = msg.content[RecordKey.CONFIG.value]
        assert config["task"] == node.task and config["foundation-hash"] == HASH
        assert config["server-round"] == 1
    assert all(v > 0 for v in strategy.comm.down[1].values())


def test_aggregation_is_weighted_per_task_and_isolated() -> None:
    # Prepare: cls sites send 1.0 (12 examples) and 5.0 (36 examples); surv sends 7.0
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH, round_offset=4)
    messages = {m.metadata.dst_node_id: m
                for m in strategy.configure_train(1, _record(_union()), ConfigRecord(), None)}
    values = {1: (1.0, 12), 2: (5.0, 36), 3: (7.0, 10)}
    replies = []
    for node in NODES:
        value, n = values[node.node_id]
        skill = {k: np.full(s, value, np.float32) for k, s in SHAPES[node.task].items()}
        replies.append(_reply(messages[node.node_id], node, skill, n))

    # Execute
    arrays, metrics = strategy.aggregate_train(1, reversed(replies))

    # Assert: exact weighted mean for cls, surv = its single site, round offset applied
    union = {k: a.numpy() for k, a in arrays.items()}
    for value in slice_task(union, "cls").values():
        np.testing.assert_allclose(value, (1.0 * 12 + 5.0 * 36) / 48)
    for value in slice_task(union, "surv").values():
        np.testing.assert_allclose(value, 7.0)
    assert metrics["cls/train_loss"] == pytest.approx((12 * 12 + 36 * 36) / 48)
    assert strategy._record["round"] == 5


def test_one_task_replies_never_change_another_task() -> None:
    # Prepare: only the cls sites reply
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH)
    start = _union(fill=3.0)
    messages = {m.metadata.dst_node_id: m
                for m in strategy.configure_train(1, _record(start), ConfigRecord(), None)}
    replies = [
        _reply(messages[n.node_id], n, {k: np.zeros(s, np.float32)
                                         for k, s in SHAPES["cls"].items()}, 10)
        for n in NODES if n.task == "cls"
    ]

    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)

    # Assert
    union = {k: a.numpy() for k, a in arrays.items()}
    for key, value in slice_task(start, "surv").items():
        np.testing.assert_array_equal(slice_task(union, "surv")[key], value)


def test_foreign_foundation_errors_and_budget_stops_are_handled() -> None:
    # Prepare: a reply on another foundation, an error, and a site out of privacy budget
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH)
    start = _union(fill=2.0)
    messages = {m.metadata.dst_node_id: m
                for m in strategy.configure_train(1, _record(start), ConfigRecord(), None)}
    skill = {k: np.zeros(s, np.float32) for k, s in SHAPES["cls"].items()}
    error = Message(Error(code=0, reason="boom"), reply_to=messages[2])
    error.metadata.__dict__["_src_node_id"] = 2
    replies = [
        _reply(messages[1], NODES[0], skill, 10, foundation="0" * 64),
        error,
        _reply(messages[3], NODES[2], None, 0, status=Status.BUDGET_EXHAUSTED),
    ]

    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    next_round = list(strategy.configure_train(2, arrays, ConfigRecord(), None))

    # Assert: nothing mixed in, reasons recorded, the stopped site gets no more training
    union = {k: a.numpy() for k, a in arrays.items()}
    for key, value in start.items():
        np.testing.assert_array_equal(union[key], value)
    sites = strategy._record["sites"]
    assert sites["c"]["status"] == Status.BUDGET_EXHAUSTED.value
    assert [m.metadata.dst_node_id for m in next_round] == [1, 2]
    assert "c" in strategy.stopped


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PerTaskFedAvg([], foundation_hash=HASH)
    with pytest.raises(ValueError, match="one node"):
        PerTaskFedAvg([SiteNode(1, "a", "t"), SiteNode(2, "a", "t")], foundation_hash=HASH)
