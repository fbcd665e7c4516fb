"""End to end on Flower's own simulation engine (Ray): 3 sites, 2 tasks, 2 rounds.

The ServerApp's Grid is wrapped to record every instruction and every reply of the run; the
replies come back from ClientApps in Ray worker processes, i.e. over a real serialisation path.
Also runs the `flwr run` path of `unicon federate` and checks no process is left behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from tests.server.fedtools import (
    CLS_TASK,
    SURV_TASK,
    THREE_SITES,
    make_sites,
    task_spec,
    tiny_overrides,
)
from unicon_core.config import BackboneConfig
from unicon_core.federation.protocol import SummaryKey
from unicon_core.model import UniconModel

pytestmark = pytest.mark.slow


class RecordingGrid(Grid):
    """Delegates to Flower's grid and keeps every message sent and received."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.sent += messages
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        self.received += replies
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        messages = list(messages)
        self.sent += messages
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        self.received += replies
        return replies


def test_flower_simulation_three_sites_two_tasks(tmp_path: Path) -> None:
    # Prepare
    from flwr.simulation import run_simulation

    from client.client_app import make_client_app
    from server.federation import run_federation
    from unicon_core.hydra_config import load_settings

    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    overrides = tiny_overrides(dirs, tmp_path / "run", 2)
    recorded: list[RecordingGrid] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        recorder = RecordingGrid(grid)
        recorded.append(recorder)
        run_federation(recorder, load_settings(overrides))

    # Execute
    run_simulation(server_app, make_client_app(overrides), num_supernodes=3,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0}})

    # Assert: the run finished with results for both tasks
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["rounds"] == 2 and set(results["tasks"]) == {CLS_TASK, SURV_TASK}
    # ... and every reply that left a site carried only its own task's skill keys
    model = UniconModel(BackboneConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64))
    for task in (CLS_TASK, SURV_TASK):
        model.add_task(task_spec(task))
    grid = recorded[0]
    assert len(grid.received) == len(grid.sent) == 3 + 2 * (3 + 3)
    for reply in grid.received:
        assert not reply.has_error(), reply.error.reason
        task = reply.content["info"]["task"]
        arrays = {k for rec in reply.content.array_records.values() for k in rec}
        if reply.metadata.message_type == "train":
            assert arrays == model.skill_keys(task)
        elif reply.metadata.message_type == "query":  # router moments only (issue 7)
            assert arrays <= {k.value for k in SummaryKey}
        else:
            assert arrays == set()
        for record in reply.content.metric_records.values():
            assert all(isinstance(v, (int, float)) for v in record.values())


def test_flwr_run_command_leaves_no_process(tmp_path: Path) -> None:
    # Prepare
    from unicon_flower.launcher import (
        FLWR_HOME_DIR,
        descendants,
        run_federated,
        superlink_pids,
    )

    dirs = make_sites(tmp_path / "sites", THREE_SITES)

    # Execute: the real `flwr run <repo> local --stream` path
    run_dir = run_federated(tiny_overrides(dirs, tmp_path / "run", 1), timeout_s=400)

    # Assert
    results = json.loads((run_dir / "results.json").read_text())
    assert results["rounds"] == 1
    assert (run_dir / FLWR_HOME_DIR / "config.toml").is_file()
    links = superlink_pids(run_dir / FLWR_HOME_DIR)
    assert links == [] and descendants(links) == []
