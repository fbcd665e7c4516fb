"""Egress guard: only the task's skill tensors (as sent) may leave a site."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.mods.egress_guard import EgressGuard

SKILL = {"adapter.l.lora_A.weight": np.zeros((2, 4), np.float32),
         "head.fc.weight": np.zeros((2, 2), np.float32)}


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _instruction(with_skill: bool = True) -> Message:
    content = RecordDict({"config": ConfigRecord({"task": "t"})})
    if with_skill:
        content["skill"] = ArrayRecord({k: Array(v) for k, v in SKILL.items()})
    return Message(content=content, dst_node_id=1, message_type="train")


def _app(records: dict[str, Any]) -> Callable[[Message, Context], Message]:
    def app(msg: Message, ctx: Context) -> Message:
        return Message(RecordDict(records), reply_to=msg)
    return app


def _ctx() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def _skill(**extra: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in {**SKILL, **extra}.items()})


def test_skill_tensors_and_scalars_pass() -> None:
    reply = EgressGuard()(_instruction(), _ctx(), _app({
        "skill": _skill(), "metrics": MetricRecord({"num-examples": 4, "loss": 0.3}),
        "info": ConfigRecord({"site": "a", "synthetic": True})}))
    assert reply.has_content() and set(reply.content["skill"].keys()) == set(SKILL)


@pytest.mark.parametrize(
    ("records", "with_skill", "match"),
    [
        ({"skill": _skill(input=np.zeros((2, 4), np.float32))}, True, "'input' is not a skill"),
        ({"skill": _skill(**{"head.fc.weight": np.zeros((3, 3), np.float32)})}, True, "shape"),
        ({"images": ArrayRecord({"x": Array(np.zeros(3, np.float32))})}, True, "only leave"),
        ({"skill": _skill()}, False, "not a skill tensor"),
        ({"metrics": MetricRecord({"per_patient": [0.1, 0.2]})}, True, "not a scalar"),
        ({"info": ConfigRecord({"ids": ["p1", "p2"]})}, True, "only scalars"),
        ({"info": ConfigRecord({"raw": b"\x00\x01"})}, True, "only scalars"),
        ({"info": ConfigRecord({"dump": "x" * 20})}, True, "characters long"),
    ],
)
def test_anything_else_is_refused(records: dict[str, Any], with_skill: bool, match: str) -> None:
    # Execute
    reply = EgressGuard(max_config_chars=16)(_instruction(with_skill), _ctx(), _app(records))

    # Assert: an error reply, naming the offending key, with no content
    assert reply.has_error() and not reply.has_content()
    assert "egress guard refused" in reply.error.reason
    assert match in reply.error.reason


def test_a_refusal_names_the_first_problems_and_counts_the_rest() -> None:
    # Prepare: a diverged reply, every one of 8 skill tensors non-finite
    skill = {f"adapter.l{i}.lora_A.weight": np.zeros((2, 4), np.float32) for i in range(8)}
    sent = Message(RecordDict({"skill": ArrayRecord({k: Array(v) for k, v in skill.items()})}),
                   dst_node_id=1, message_type="train")
    nan = ArrayRecord({k: Array(np.full_like(v, np.nan)) for k, v in skill.items()})
    # Execute
    reply = EgressGuard()(sent, _ctx(), _app({"skill": nan}))
    # Assert: five named, three counted
    reason = reply.error.reason
    assert reply.has_error() and reason.count("non-finite") == 5
    assert reason.endswith("; and 3 more problem(s) (the site's log lists them)")


def test_label_dtype_is_refused_even_under_a_skill_key() -> None:
    skill = ArrayRecord({"head.b": Array(np.zeros(3, np.int64))})
    instruction = Message(RecordDict({"skill": skill}), dst_node_id=1, message_type="train")
    reply = EgressGuard()(instruction, _ctx(), _app(
        {"skill": ArrayRecord({"head.b": Array(np.array([0, 1, 1]))})}))
    assert reply.has_error() and "dtype" in reply.error.reason


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        EgressGuard(max_config_chars=0)
    with pytest.raises(ValueError):
        EgressGuard(skill_record="")


def _summary(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


PROTO = {"router.prototype": np.zeros(40, np.float64)}


def test_router_summary_passes_on_a_query() -> None:
    reply = EgressGuard()(_instruction(with_skill=False), _ctx(), _app({
        "summary": _summary(**PROTO), "metrics": MetricRecord({"num-examples": 30})}))
    assert reply.has_content() and set(reply.content["summary"].keys()) == set(PROTO)


@pytest.mark.parametrize(
    ("arrays", "count", "match"),
    [
        ({"router.images": np.zeros(40, np.float64)}, 30, "not one of"),
        ({"router.prototype": np.zeros((6, 40), np.float64)}, 30, "not a vector"),
        ({"router.prototype": np.zeros(100_000, np.float64)}, 30, "not a vector"),
        ({"router.prototype": np.zeros(40, np.int64)}, 30, "not floating point"),
        (PROTO, 1, "needs >= 5 examples"),  # a "mean" over one row would be that row
    ],
)
def test_router_summary_outside_the_rules_is_refused(
    arrays: dict[str, np.ndarray], count: int, match: str
) -> None:
    reply = EgressGuard()(_instruction(with_skill=False), _ctx(), _app({
        "summary": _summary(**arrays), "metrics": MetricRecord({"num-examples": count})}))
    assert reply.has_error()
    assert match in reply.error.reason


@pytest.mark.parametrize("codec", ["none", "fp16", "int8", "topk"])
def test_encoded_deltas_of_the_skill_pass(codec: str) -> None:
    from unicon_core.federation.compression import Codec, encode_delta

    local = {k: v + 1 for k, v in SKILL.items()}
    payload, _ = encode_delta(local, SKILL, Codec(codec, per_row=True, topk_fraction=0.5))
    reply = EgressGuard()(_instruction(), _ctx(), _app({
        "delta": ArrayRecord({k: Array(v) for k, v in payload.items()})}))
    assert not reply.has_error(), reply.error.reason


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"input#idx": np.zeros(2, np.int32)}, "not an update"),
        ({"head.fc.weight": np.zeros((9,), np.float32),
          "head.fc.weight#idx": np.zeros(9, np.int32)}, "does not encode"),
        ({"head.fc.weight": np.zeros((2, 2), np.int8)}, "does not encode"),  # int8 sans scale
        ({"head.fc.weight": np.zeros((2, 2), np.int8),
          "head.fc.weight#scale": np.zeros(5, np.float32)}, "does not encode"),
        ({"head.fc.weight": np.zeros((3,), np.float32)}, "does not encode"),
    ],
)
def test_anything_else_in_a_delta_record_is_refused(arrays: dict, match: str) -> None:
    reply = EgressGuard()(_instruction(), _ctx(), _app({
        "delta": ArrayRecord({k: Array(v) for k, v in arrays.items()})}))
    assert reply.has_error() and match in reply.error.reason


@pytest.mark.parametrize("codec", ["none", "fp16", "int8", "topk"])
def test_packed_deltas_of_the_skill_pass(codec: str) -> None:
    from unicon_core.federation.compression import Codec, encode_delta, to_wire

    spec = Codec(codec, per_row=True, topk_fraction=0.5, packed=True)
    local = {k: v + 1 for k, v in SKILL.items()}
    wire = to_wire(encode_delta(local, SKILL, spec)[0], SKILL, spec)
    reply = EgressGuard()(_instruction(), _ctx(), _app({
        "delta": ArrayRecord({k: Array(v) for k, v in wire.items()})}))
    assert not reply.has_error(), reply.error.reason


# The skill holds 12 values in 4 rows: a packed delta may carry 12 int8 values or indices and
# 12 + 4 float values (values and per-row scales), nothing more, and only as flat groups.
@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"#packed.float32": np.zeros(17, np.float32)}, "17 float values, more than"),
        ({"#packed.float16": np.zeros(9, np.float16),
          "#packed.float32": np.zeros(8, np.float32)}, "17 float values, more than"),
        ({"#packed.int8": np.zeros(13, np.int8)}, "13 int8 values, more than"),
        ({"#packed.int32": np.zeros(13, np.int32)}, "13 indices, more than"),
        ({"#packed.float32": np.zeros((4, 3), np.float32)}, "not one packed group"),
        ({"#packed.float32": np.zeros(4, np.float16)}, "not one packed group"),
        ({"#packed.uint8": np.zeros(4, np.uint8)}, "not one packed group"),
        ({"#packed.float32": np.zeros(4, np.float32),
          "head.fc.weight": np.zeros((2, 2), np.float32)}, "not one packed group"),
    ],
)
def test_packed_delta_beyond_the_skills_capacity_is_refused(arrays: dict, match: str) -> None:
    reply = EgressGuard()(_instruction(), _ctx(), _app({
        "delta": ArrayRecord({k: Array(v) for k, v in arrays.items()})}))
    assert reply.has_error() and match in reply.error.reason
