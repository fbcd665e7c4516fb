"""AnswerTimer: adds answer/handle/process seconds to a reply's metrics, nothing else."""

from __future__ import annotations

import time

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.mods.answer_timer import ANSWER_S, HANDLE_S, PROCESS_S, AnswerTimer, process_age_s


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _instruction() -> Message:
    msg = Message(RecordDict({"config": ConfigRecord({"task": "t"})}), dst_node_id=1,
                  message_type="train")
    msg.metadata.__dict__["_created_at"] = time.time() - 2.0  # created 2 s ago by the server
    return msg


def test_timings_are_added_to_the_metrics_record() -> None:
    # Prepare
    def app(msg: Message, ctx: Context) -> Message:
        time.sleep(0.05)
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 3})}), reply_to=msg)

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    # Execute
    reply = AnswerTimer()(_instruction(), ctx, app)

    # Assert
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 3
    assert 0.05 <= metrics[HANDLE_S] < 2.0
    assert 2.0 <= metrics[ANSWER_S] < 30.0
    assert metrics[PROCESS_S] >= 0.0


def test_errors_and_replies_without_metrics_pass_unchanged() -> None:
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    error = AnswerTimer()(_instruction(), ctx,
                          lambda m, c: Message(Error(code=0, reason="x"), reply_to=m))
    assert error.has_error()
    bare = AnswerTimer()(_instruction(), ctx,
                         lambda m, c: Message(RecordDict({"info": ConfigRecord({"a": 1})}),
                                              reply_to=m))
    assert "metrics" not in bare.content


def test_process_age_is_measured_from_proc() -> None:
    age = process_age_s()
    assert age is not None and 0.0 < age < 24 * 3600
