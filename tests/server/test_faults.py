"""Faults during a run: a site that dies mid-round and rejoins, a server killed and resumed.

The runs use the real ServerApp logic and ClientApp over the in-process grid of ``fedtools``;
the server crash runs in a child process that is SIGKILLed at a chosen point (mid-round, or
between the round's log line and its checkpoint), then the run is resumed in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from client.client_app import make_client_app
from server.federation import run_federation
from tests.server.fedtools import THREE_SITES, InProcessGrid, make_sites, tiny_overrides
from unicon_core.federation.checkpoint import CHECKPOINT_FILE, load_checkpoint
from unicon_core.federation.outputs import read_jsonl
from unicon_core.hydra_config import load_settings

REPO = Path(__file__).resolve().parents[2]


class FlakyGrid(InProcessGrid):
    """Drops every message to ``node`` in the given rounds: the site is down, no reply comes."""

    def __init__(self, *args: object, node: int, down_rounds: set[int], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.down_node, self.down_rounds = node, down_rounds

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        kept = []
        for msg in messages:
            config = msg.content.config_records.get("config")
            rnd = int(config.get("server-round", 0)) if config is not None else 0
            if msg.metadata.dst_node_id == self.down_node and rnd in self.down_rounds:
                continue  # lost: the site crashed
            kept.append(msg)
        return super().push_messages(kept)


def test_a_site_that_dies_mid_run_is_left_out_and_rejoins(tmp_path: Path) -> None:
    # Prepare: site_b (node 1001) is down during round 2 only
    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    overrides = tiny_overrides(dirs, tmp_path / "run", 3)
    grid = FlakyGrid(make_client_app(overrides), 3, node=1001, down_rounds={2})

    # Execute
    run_federation(grid, load_settings(overrides))

    # Assert: every round completed; round 2 without site_b, which is back in round 3
    rows = read_jsonl(tmp_path / "run" / "rounds.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3]
    status = [r["sites"]["site_b"]["status"] for r in rows]
    assert status[0] == status[2] == "trained" and status[1] == "no-reply"
    assert rows[1]["tasks"]["tab_cls"]["sites_aggregated"] == 1
    assert rows[2]["tasks"]["tab_cls"]["sites_aggregated"] == 2
    assert load_checkpoint(tmp_path / "run").round == 3


CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import server.federation as fed
    from client.client_app import make_client_app
    from tests.server.fedtools import InProcessGrid
    from unicon_core.hydra_config import load_settings

    where, overrides = sys.argv[1], sys.argv[2:]
    train_replies = []

    def hook(reply):  # mid-round: die after the 2nd of round 2's 3 training replies
        if reply.metadata.message_type == "train":
            train_replies.append(reply)
            if where == "mid-round" and len(train_replies) == 5:
                os.kill(os.getpid(), signal.SIGKILL)

    real_save = fed.save_checkpoint

    def save(run_dir, ckpt):  # mid-checkpoint: die with round 2's temp file half-written
        if where == "mid-checkpoint" and ckpt.round == 2:
            def torn(src, dst):
                Path(src).write_bytes(Path(src).read_bytes()[:100])
                os.kill(os.getpid(), signal.SIGKILL)
            os.replace = torn
        return real_save(run_dir, ckpt)

    fed.save_checkpoint = save
    grid = InProcessGrid(make_client_app(overrides), 3, hook=hook)
    fed.run_federation(grid, load_settings(overrides))
""")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid-round", "mid-checkpoint"])
def test_server_killed_then_resumed_loses_and_repeats_no_round(tmp_path: Path, where: str) -> None:
    from tests.server.fedtools import run_in_process

    # Prepare: a straight 3-round run to compare with
    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    run_in_process(tiny_overrides(dirs, tmp_path / "straight", 3), 3)
    crashed = tmp_path / "crashed"
    overrides = tiny_overrides(dirs, crashed, 3)

    # Execute: the server process is SIGKILLed during round 2 ...
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, where, *overrides], cwd=REPO, env=env,
                            start_new_session=True)
    try:
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == -signal.SIGKILL
    assert load_checkpoint(crashed).round == 1  # round 2 never got its checkpoint
    # ... and restarted with resume=true
    run_in_process([*overrides, "resume=true"], 3)

    # Assert: rounds 1..3 once each, and exactly the skills of the uninterrupted run
    rows = read_jsonl(crashed / "rounds.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3]
    straight, resumed = load_checkpoint(tmp_path / "straight"), load_checkpoint(crashed)
    assert resumed.round == 3 and straight.arrays.keys() == resumed.arrays.keys()
    for key, value in straight.arrays.items():
        np.testing.assert_array_equal(resumed.arrays[key], value, err_msg=key)
    assert not list(crashed.glob(f".{CHECKPOINT_FILE}-*"))  # the torn temp file is gone
    assert json.loads((crashed / "results.json").read_text())["rounds"] == 3
