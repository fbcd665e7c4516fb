"""A site refuses instructions for another foundation or task, loudly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import make_client_app
from client.site_runner import FoundationMismatchError
from tests.server.fedtools import CLS_TASK, make_site, tiny_overrides


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _train(config: dict, skill: dict[str, np.ndarray] | None = None) -> Message:
    content = RecordDict({"config": ConfigRecord(config)})
    if skill is not None:
        content["skill"] = ArrayRecord({k: Array(v) for k, v in skill.items()})
    return Message(content=content, dst_node_id=1, message_type="train")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"foundation-hash": "0" * 64, "task": CLS_TASK, "server-round": 1}, "runs foundation"),
        ({"task": "other_task", "server-round": 1}, "was sent task 'other_task'"),
        ({"task": CLS_TASK, "server-round": 1}, "no skill record"),
    ],
)
def test_train_instruction_is_refused(tmp_path: Path, config: dict, match: str) -> None:
    # Prepare: one site served through the real ClientApp (guard included)
    site = make_site(tmp_path / "sites", "site_a", CLS_TASK)
    app = make_client_app(tiny_overrides([site], tmp_path / "run", 1))
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={})

    # Execute
    with pytest.raises(Exception, match=match) as info:
        app(_train(config), context)
    if "foundation-hash" in config:
        assert isinstance(info.value, FoundationMismatchError)
