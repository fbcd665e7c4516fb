"""Red team, surface "server": replies a malicious site sends to the server.

Each case failed before the fix (see ``docs/security.md``, "Server: replies are claims").
Outcomes: ``clear_error`` (the reply, or the site at the query round, is left out with a logged
reason and the round goes on) and ``confined`` (a claim is cut down to what the site declared).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.federation import query_sites
from server.strategies.per_task_fedavg import PerTaskFedAvg, SiteNode
from tests.server.fedtools import CLS_TASK, task_spec
from unicon_core.federation.aggregation import prefix_task, slice_task, weighted_average
from unicon_core.federation.config import FederationConfig
from unicon_core.federation.protocol import InfoKey, RecordKey, Status

SERVER = "server"
HASH = "f" * 64
SHAPES = {"adapter.x": (2, 3), "head.w": (4,)}
#: Three sites of one task, each declaring 12 train and 6 evaluation examples at the query.
NODES = [SiteNode(i, f"s{i}", "cls", train_examples=12, eval_examples=6) for i in (1, 2, 3)]


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _start() -> ArrayRecord:
    skill = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    return ArrayRecord({k: Array(v) for k, v in prefix_task("cls", skill).items()})


def _skill(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}


def _reply(instruction: Message, node: SiteNode, *, skill: Any = None, n: float = 12,
           metrics: dict[str, Any] | None = None, **info: Any) -> Message:
    """A reply of ``node``; ``info`` overrides fields of its info record (None drops one)."""
    fields = {InfoKey.SITE.value: node.site, InfoKey.TASK.value: node.task,
              InfoKey.FOUNDATION_HASH.value: HASH, InfoKey.STATUS.value: Status.TRAINED.value,
              InfoKey.ROUND.value: instruction.content["config"]["server-round"]}
    fields.update({k.replace("_", "-"): v for k, v in info.items()})
    content: dict[str, Any] = {
        RecordKey.METRICS.value: MetricRecord({"num-examples": n, **(metrics or {})}),
        RecordKey.INFO.value: ConfigRecord({k: v for k, v in fields.items() if v is not None}),
    }
    if isinstance(skill, dict):
        content[RecordKey.SKILL.value] = ArrayRecord({k: Array(v) for k, v in skill.items()})
    elif skill is not None:
        content[RecordKey.SKILL.value] = skill
    reply = Message(RecordDict(content), reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node.node_id
    return reply


def _train(strategy: PerTaskFedAvg, rnd: int, make: Any) -> dict[str, np.ndarray]:
    """One train round: ``make(instruction, node)`` builds each node's reply (None: silent)."""
    start = _start() if strategy._arrays is None else strategy._arrays
    messages = {m.metadata.dst_node_id: m
                for m in strategy.configure_train(rnd, start, ConfigRecord(), None)}
    replies = [r for n in strategy.nodes.values()
               if (r := make(messages[n.node_id], n)) is not None]
    arrays, _ = strategy.aggregate_train(rnd, replies)
    assert arrays is not None
    return slice_task({k: a.numpy() for k, a in arrays.items()}, "cls")


def _status(strategy: PerTaskFedAvg, site: str) -> tuple[str, str]:
    entry = strategy._record["sites"][site]
    return entry.get("status", ""), entry.get("reason", "")


# ------------------------------------------------------------------------ example counts
@pytest.mark.redteam(surface=SERVER, outcome="confined")
def test_a_trillion_examples_do_not_make_one_site_the_tasks_skill() -> None:
    # Prepare: s1 and s2 honest (value 1, 12 examples), s3 claims 10^12 examples (value 4)
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH, update_norm_factor=None)

    def make(msg: Message, node: SiteNode) -> Message:
        if node.site == "s3":
            return _reply(msg, node, skill=_skill(4.0), n=1e12)
        return _reply(msg, node, skill=_skill(1.0))

    # Execute
    got = _train(strategy, 1, make)

    # Assert: s3 weighs what it declared at the query (12), like the others: mean of 1, 1, 4
    for value in got.values():
        np.testing.assert_allclose(value, 2.0, rtol=1e-6)


@pytest.mark.redteam(surface=SERVER, outcome="confined")
def test_two_huge_counts_do_not_overflow_the_weights() -> None:
    states = [_skill(1.0), _skill(3.0)]
    got = weighted_average(states, [1e308, 1e308])
    for value in got.values():
        np.testing.assert_allclose(value, 2.0)


@pytest.mark.redteam(surface=SERVER, outcome="confined")
def test_evaluation_count_is_bounded_by_the_declared_test_split() -> None:
    # Prepare: s1 reports auc 0.9 on 6 examples, s2 auc 0.1 claiming 10^9 (it declared 6)
    strategy = PerTaskFedAvg(NODES[:2], foundation_hash=HASH)
    _train(strategy, 1, lambda m, n: _reply(m, n, skill=_skill(1.0)))
    messages = {m.metadata.dst_node_id: m
                for m in strategy.configure_evaluate(1, strategy._arrays, ConfigRecord(), None)}
    replies = [
        _reply(messages[1], NODES[0], n=6, metrics={"auc": 0.9}, status="evaluated"),
        _reply(messages[2], NODES[1], n=1e9, metrics={"auc": 0.1}, status="evaluated"),
    ]

    # Execute
    summary = strategy.aggregate_evaluate(1, replies)

    # Assert
    assert summary is not None and summary["cls/auc"] == pytest.approx(0.5)
    assert any("clamped" in f for f in strategy._record["sites"]["s2"]["flags"])


# ------------------------------------------------------------------------ undecodable replies
def _bad_bytes() -> Array:
    return Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=b"\x93NUMPY junk")


@pytest.mark.redteam(surface=SERVER, outcome="clear_error")
@pytest.mark.parametrize("array", [
    pytest.param(_bad_bytes, id="damaged-bytes"),
    pytest.param(lambda: Array(dtype="float32", shape=(2, 3), stype="pickle", data=b"x"),
                 id="unknown-stype"),
])
def test_an_undecodable_array_is_rejected_and_the_round_goes_on(array: Any) -> None:
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH)

    def make(msg: Message, node: SiteNode) -> Message:
        if node.site == "s2":
            record = ArrayRecord({"adapter.x": array(), "head.w": Array(np.ones(4, np.float32))})
            return _reply(msg, node, skill=record)
        return _reply(msg, node, skill=_skill(1.0 if node.site == "s1" else 1.1))

    got = _train(strategy, 1, make)

    status, reason = _status(strategy, "s2")
    assert status == "rejected" and "undecodable" in reason
    assert strategy._record["tasks"]["cls"]["sites_aggregated"] == 2
    np.testing.assert_allclose(got["head.w"], 1.05, rtol=1e-6)


@pytest.mark.redteam(surface=SERVER, outcome="clear_error")
def test_an_unknown_status_is_rejected() -> None:
    strategy = PerTaskFedAvg(NODES[:2], foundation_hash=HASH)
    _train(strategy, 1, lambda m, n: _reply(m, n, skill=_skill(9.0), status="owned")
           if n.site == "s2" else _reply(m, n, skill=_skill(1.0)))
    status, reason = _status(strategy, "s2")
    assert status == "rejected" and "'owned'" in reason


# ------------------------------------------------------------------------ metrics
@pytest.mark.redteam(surface=SERVER, outcome="clear_error")
@pytest.mark.parametrize(("metrics", "match"), [
    ({"auc": 7.0}, "outside [0, 1]"),
    ({"c_index": -0.5}, "outside [0, 1]"),
    ({"dice": 1.5}, "outside [0, 1]"),
    ({"loss": float("inf")}, "is inf"),
    ({f"m{i}": 0.0 for i in range(100)}, "at most 64"),
])
def test_impossible_evaluation_metrics_are_rejected(metrics: dict, match: str) -> None:
    strategy = PerTaskFedAvg(NODES[:2], foundation_hash=HASH)
    _train(strategy, 1, lambda m, n: _reply(m, n, skill=_skill(1.0)))
    messages = {m.metadata.dst_node_id: m
                for m in strategy.configure_evaluate(1, strategy._arrays, ConfigRecord(), None)}
    replies = [_reply(messages[1], NODES[0], n=6, metrics={"auc": 0.7}, status="evaluated"),
               _reply(messages[2], NODES[1], n=6, metrics=metrics, status="evaluated")]

    summary = strategy.aggregate_evaluate(1, replies)

    status, reason = _status(strategy, "s2")
    assert status == "rejected" and match in reason
    assert summary is not None and summary["cls/auc"] == pytest.approx(0.7)


@pytest.mark.redteam(surface=SERVER, outcome="clear_error")
def test_an_impossible_validation_metric_rejects_the_train_reply() -> None:
    strategy = PerTaskFedAvg(NODES[:2], foundation_hash=HASH)
    _train(strategy, 1, lambda m, n: _reply(m, n, skill=_skill(1.0), metrics={
        "val_balanced_accuracy": 2.0} if n.site == "s2" else None))
    status, reason = _status(strategy, "s2")
    assert status == "rejected" and "val_balanced_accuracy" in reason


# ------------------------------------------------------------------------ update norm, replays
@pytest.mark.redteam(surface=SERVER, outcome="clear_error")
def test_a_boosted_update_is_rejected_by_the_default_bound() -> None:
    # Prepare: no max_update_norm configured; s3 sends 100x the honest update
    strategy = PerTaskFedAvg(NODES, foundation_hash=HASH)
    got = _train(strategy, 1, lambda m, n: _reply(
        m, n, skill=_skill({"s1": 1.0, "s2": 1.2, "s3": 100.0}[n.site])))
    status, reason = _status(strategy, "s3")
    assert status == "rejected" and "median" in reason
    np.testing.assert_allclose(got["head.w"], 1.1, rtol=1e-6)


@pytest.mark.redteam(surface=SERVER, outcome="clear_error")
def test_a_reply_for_another_round_is_a_replay() -> None:
    strategy = PerTaskFedAvg(NODES[:2], foundation_hash=HASH)
    _train(strategy, 1, lambda m, n: _reply(m, n, skill=_skill(1.0)))
    _train(strategy, 2, lambda m, n: _reply(m, n, skill=_skill(2.0), server_round=1)
           if n.site == "s2" else _reply(m, n, skill=_skill(2.5)))
    status, reason = _status(strategy, "s2")
    assert status == "rejected" and reason.startswith("replay")


@pytest.mark.redteam(surface=SERVER, outcome="clear_error")
def test_a_byte_identical_update_from_an_earlier_round_is_a_replay() -> None:
    strategy = PerTaskFedAvg(NODES[:2], foundation_hash=HASH)
    _train(strategy, 1, lambda m, n: _reply(m, n, skill=_skill(1.0 if n.site == "s1" else 3.0)))
    got = _train(strategy, 2, lambda m, n: _reply(
        m, n, skill=_skill(3.0 if n.site == "s2" else 2.5)))  # s2 sends round 1's bytes again
    status, reason = _status(strategy, "s2")
    assert status == "rejected" and "round 1" in reason
    assert "replay" in strategy._record["sites"]["s2"]["flags"]
    np.testing.assert_allclose(got["head.w"], 2.5)


# ------------------------------------------------------------------------ query round
class _QueryGrid:
    """A grid whose nodes answer the query round with crafted replies."""

    def __init__(self, make: dict[int, Any]) -> None:
        self.make = make

    def get_node_ids(self) -> list[int]:
        return sorted(self.make)

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        out = []
        for msg in messages:
            reply = self.make[msg.metadata.dst_node_id](msg)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            out.append(reply)
        return out


def _ready(site: str, n: Any = 12, **info: Any) -> Any:
    def make(msg: Message) -> Message:
        fields = {InfoKey.SITE.value: site, InfoKey.TASK.value: CLS_TASK,
                  InfoKey.FOUNDATION_HASH.value: HASH, InfoKey.STATUS.value: Status.READY.value,
                  InfoKey.SYNTHETIC.value: True,
                  InfoKey.TASK_SPEC.value: json.dumps(task_spec(CLS_TASK).to_dict())}
        fields.update({k.replace("_", "-"): v for k, v in info.items()})
        return Message(RecordDict({
            RecordKey.INFO.value: ConfigRecord(fields),
            RecordKey.METRICS.value: MetricRecord({"num-examples": n}),
        }), reply_to=msg)
    return make


def _query(tmp_path: Path, make: dict[int, Any]) -> Any:
    settings = SimpleNamespace(federation=FederationConfig(node_wait_s=1.0), tasks={})
    return query_sites(_QueryGrid(make), settings, HASH, tmp_path)  # type: ignore[arg-type]


def _no_info(msg: Message) -> Message:
    return Message(RecordDict({RecordKey.METRICS.value: MetricRecord({"x": 1})}), reply_to=msg)


@pytest.mark.redteam(surface=SERVER, outcome="clear_error")
@pytest.mark.parametrize(("bad", "match"), [
    pytest.param(_no_info, "no info record", id="no-info"),
    pytest.param(_ready("evil", task_spec="{not json"), "undecodable", id="bad-spec"),
    pytest.param(_ready("evil", n=1e12), "not a count", id="trillion-declared"),
    pytest.param(_ready("evil", n=-1), "not a count", id="negative-declared"),
    pytest.param(_ready("evil", status="owned"), "not 'ready'", id="unknown-status"),
])
def test_a_bad_query_reply_excludes_its_node_not_the_run(
    tmp_path: Path, bad: Any, match: str
) -> None:
    result = _query(tmp_path, {1: _ready("good"), 2: bad})
    assert [n.site for n in result.nodes] == ["good"]
    assert result.nodes[0].train_examples == 12
    (reason,) = [r for w, r in result.excluded.items() if w in ("evil", "node 2")]
    assert match in reason


@pytest.mark.redteam(surface=SERVER, outcome="clear_error")
def test_a_node_claiming_another_sites_name_does_not_replace_it(tmp_path: Path) -> None:
    # Prepare: node 1 (earlier id) squats on the name of site_a, which node 2 really serves
    result = _query(tmp_path, {1: _ready("site_a"), 2: _ready("site_a"), 3: _ready("site_b")})
    # Assert: the name is ambiguous, so neither claimant joins; the squatter gains nothing
    assert [n.site for n in result.nodes] == ["site_b"]
    assert "nodes 1, 2" in result.excluded["site_a"]
