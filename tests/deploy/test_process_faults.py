"""Faults against real processes: a SuperLink SIGKILLed mid-run and resumed, a site SIGKILLed
mid-round and restarted, a site with a corrupt file reported while the others go on.

The loopback deployment of ``test_deployment`` (TLS, node authentication, a state database,
every process started through ``deploy/``); the crashes are real SIGKILLs of a process with
its group and descendants (``LoopbackFederation.kill``): the SuperLink together with the
SuperExec and ServerApp it started, or a site's SuperNode with its executor and ClientApps.
Every process a test starts is stopped by PID in the fixture's ``finally``, also on failure.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.fedtools import CLS_TASK, THREE_SITES, make_sites
from unicon_core.federation.checkpoint import CHECKPOINT_FILE, load_checkpoint
from unicon_core.federation.exclusions import MAX_REASON_CHARS
from unicon_core.federation.outputs import read_jsonl
from unicon_flower.loopback import LoopbackFederation, alive, wait_until

pytestmark = pytest.mark.slow


def overrides(run_dir: Path, rounds: int, round_timeout_s: float, *extra: str) -> list[str]:
    """A tiny experiment whose 3 sites are whoever connects (as in ``test_deployment``)."""
    return [
        "~experiment", "federation.min_sites=3", "federation.node_wait_s=120",
        f"federation.round_timeout_s={round_timeout_s}", f"federation.rounds={rounds}",
        f"federation.run_dir='{run_dir}'", "federation.wandb=disabled", "federation.plots=false",
        "backbone.hidden_size=32", "backbone.num_layers=2", "backbone.num_heads=2",
        "backbone.mlp_dim=64", "train.max_steps=3", "train.batch_size=8",
        "federation.evaluate=false", *extra,
    ]


def checkpoint_round(run_dir: Path) -> int:
    """Round of the run folder's checkpoint (0 while there is none)."""
    return load_checkpoint(run_dir).round if (run_dir / CHECKPOINT_FILE).is_file() else 0


def statuses(rows: list[dict], site: str) -> list[str]:
    """``site``'s status in each row of ``rounds.jsonl``."""
    return [row["sites"][site]["status"] for row in rows]


def break_manifest(site: Path) -> None:
    """Give the site's first row class 7 of a 2-class task (its data no longer validate)."""
    manifest = site / "manifest.csv"
    lines = manifest.read_text().splitlines()
    assert lines[0].endswith(",label")
    lines[1] = lines[1].rsplit(",", 1)[0] + ",7"
    manifest.write_text("\n".join(lines) + "\n")


@pytest.fixture
def federation(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LoopbackFederation]:
    """3 registered, connected sites (plus ``site_d`` with a corrupt manifest when the test is
    parametrized with ``True``); every process, restarts included, is stopped by PID after."""
    layout = [*THREE_SITES, *([("site_d", CLS_TASK, 24)] if getattr(request, "param", False)
                              else [])]
    dirs = make_sites(tmp_path / "data", layout)
    if len(dirs) > 3:
        break_manifest(dirs[3])
    fed = LoopbackFederation(tmp_path / "deploy", {d.name: d for d in dirs})
    started: set[int] = set()
    original_start = fed.start

    def start(*args: object, **kwargs: str) -> subprocess.Popen:  # every PID, restarts too
        proc = original_start(*args, **kwargs)  # type: ignore[arg-type]
        started.add(proc.pid)
        return proc

    fed.start = start  # type: ignore[method-assign]
    try:
        fed.make_pki()
        fed.start_superlink()
        fed.register()
        for site in fed.sites:
            fed.start_site(site)
        for site in fed.sites:  # every SuperNode activated before the run is submitted
            wait_until(lambda s=site: "SuperNode ID:" in fed.log(f"site-{s}"), 180,
                       f"{site} to connect", fed.procs[f"site-{site}"])
        yield fed
    finally:
        fed.stop()
        assert not [pid for pid in started if alive(pid)], "a started process survived"


def test_superlink_killed_mid_run_is_restarted_and_the_run_resumed(
    federation: LoopbackFederation,
) -> None:
    fed, run_dir, rounds = federation, federation.root / "run", 3
    args = overrides(run_dir, rounds, 120)

    # Execute 1: the run starts; once round 1 is checkpointed the SuperLink is SIGKILLed with
    # the SuperExec and ServerApp it started
    run = fed.start_flwr_run(args)
    wait_until(lambda: checkpoint_round(run_dir) >= 1, 480, "round 1's checkpoint", run)
    server_pids = fed.kill_superlink()
    done = checkpoint_round(run_dir)
    lines_at_kill = (run_dir / "rounds.jsonl").read_text().splitlines()

    # Assert 1: killed mid-run, the ServerApp with it; the checkpoint is whole
    assert 1 <= done < rounds and not (run_dir / "results.json").exists()
    assert len(server_pids) >= 3, f"SuperLink, SuperExec and ServerApp expected: {server_pids}"
    assert not any(map(alive, server_pids))
    assert fed.wait("flwr-run", 120) not in (0, None), fed.log("flwr-run")[-3000:]

    # Execute 2: the coordinator restarts the SuperLink on the same database; the sites, never
    # restarted, reconnect on their own; the researcher submits the run again with resume=true
    site_pids = {site: fed.procs[f"site-{site}"].pid for site in fed.sites}
    fed.start_superlink()
    result = fed.flwr_run([*args, "resume=true"], timeout_s=600)

    # Assert 2: every round exactly once, the rounds before the crash untouched, and the
    # checkpoint is the last round's
    assert result.returncode == 0, result.stdout[-4000:]
    assert f"resuming after round {done} of {rounds}" in result.stdout
    assert {s: fed.procs[f"site-{s}"].pid for s in fed.sites} == site_pids
    assert all(fed.procs[f"site-{s}"].poll() is None for s in fed.sites)
    rows = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    assert lines[:done] == lines_at_kill[:done]
    for site in fed.sites:
        assert statuses(rows, site) == ["trained"] * rounds
    assert load_checkpoint(run_dir).round == rounds
    assert not list(run_dir.glob(".*.tmp"))
    assert json.loads((run_dir / "results.json").read_text())["rounds"] == rounds


@pytest.mark.parametrize("federation", [True], indirect=True, ids=["with-corrupt-site"])
def test_site_killed_mid_round_is_left_out_and_rejoins_after_restart(
    federation: LoopbackFederation,
) -> None:
    fed, run_dir, rounds = federation, federation.root / "run", 8
    # a 40 s round timeout: a healthy site's round on a loaded 2-core machine (the restarted
    # site's imports running alongside) once took over 20 s and the site was left out
    run = fed.start_flwr_run(overrides(run_dir, rounds, 40))

    # Execute: site_b's SuperNode and executor are SIGKILLed as round 2 starts; once the
    # server has given up on its round-2 training reply, the hospital restarts it
    wait_until(lambda: len(read_jsonl(run_dir / "rounds.jsonl")) >= 1, 480, "round 1", run)
    killed = fed.kill_site("site_b")
    wait_until(lambda: "site site_b sent no reply in round 2" in fed.log("flwr-run"), 120,
               "the server to give up on site_b in round 2", run)
    starts = fed.restart_site("site_b", timeout_s=180)
    code = fed.wait("flwr-run", 600)

    # Assert 1: the run finished; round 2 aggregated without site_b (logged with the reason),
    # the other sites trained every round, and site_b trained again in the last round
    log = fed.log("flwr-run")
    assert code == 0, log[-4000:]
    assert not any(map(alive, killed)) and starts >= 1
    rows = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert statuses(rows, "site_a") == statuses(rows, "site_c") == ["trained"] * rounds
    site_b = statuses(rows, "site_b")
    assert site_b[0] == "trained" and site_b[1] == "no-reply" and site_b[-1] == "trained"
    assert rows[1]["sites"]["site_b"]["reason"] == "no train reply before the timeout"
    assert rows[1]["tasks"][CLS_TASK]["sites_aggregated"] == 1
    assert rows[-1]["tasks"][CLS_TASK]["sites_aggregated"] == 2
    assert load_checkpoint(run_dir).round == rounds
    results = json.loads((run_dir / "results.json").read_text())
    assert results["rounds"] == rounds

    # Assert 2: site_d's corrupt manifest was reported at the query round with the problem,
    # in the server's log and results.json; it never trained, the others were not held up
    [(who, reason)] = results["excluded"].items()
    assert who == "site_d" and "label" in reason, (who, reason)
    assert "Traceback" not in reason and len(reason) <= MAX_REASON_CHARS
    assert f"site {who} excluded from the run" in log
    assert all("site_d" not in row["sites"] for row in rows)
