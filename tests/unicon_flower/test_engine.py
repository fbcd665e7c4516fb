"""``unicon federate --engine python-api``: Flower's simulation engine in this process."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.server.fedtools import (
    CLS_TASK,
    THREE_SITES,
    break_label,
    make_sites,
    tiny_overrides,
)
from unicon_core.commands.errors import RunFailedError
from unicon_flower.engine import ENGINE_ENV, backend_config
from unicon_flower.launcher import FLOWER_LOG, FLWR_HOME_DIR, RESULTS_FILE, check_finished


@pytest.mark.slow
def test_the_python_api_engine_runs_the_federation_and_restores_the_process(
    tmp_path: Path,
) -> None:
    # Prepare
    import ray

    from unicon_flower.cli import app

    dirs = make_sites(tmp_path / "sites", [*THREE_SITES, ("site_d", CLS_TASK, 24)])
    break_label(dirs[3])  # a label outside the task's classes: site_d won't join
    run_dir = tmp_path / "run"
    environ = {k: os.environ.get(k) for k in [*ENGINE_ENV, "PYTHONPATH"]}
    handlers = list(logging.getLogger("flwr").handlers)

    # Execute
    result = CliRunner().invoke(app, ["federate", "--engine", "python-api",
                                      *tiny_overrides(dirs, run_dir, 1)])

    # Assert: the run finished and wrote its folder, with Flower's log and no SuperLink
    assert result.exit_code == 0, result.output
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    assert results["rounds"] == 1 and results["timing"]["rounds_run"] == 1
    assert list(results["excluded"]) == ["site_d"]
    log = (run_dir / FLOWER_LOG).read_text()
    assert "run_simulation" in log  # Flower's own records of this process went to the file
    # ... and so did the ClientApps' (Ray actors, other processes): site_d's own record
    [site_d] = re.findall(r"\[pid (\d+)\]: site site_d cannot join the run", log)
    assert int(site_d) != os.getpid()
    assert not (run_dir / FLWR_HOME_DIR).exists()
    # ... and the process is as before: environment, Flower's handlers, no Ray left
    assert {k: os.environ.get(k) for k in environ} == environ
    assert logging.getLogger("flwr").handlers == handlers
    assert not ray.is_initialized()


@pytest.mark.slow
def test_a_failing_server_app_is_a_run_failure_with_its_traceback_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the ServerApp's orchestration raises (it runs in a thread of this process)
    import ray

    import server.federation
    from unicon_flower.engine import run_engine

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("orchestration broke")

    monkeypatch.setattr(server.federation, "run_federation", broken)
    dirs = make_sites(tmp_path / "sites", THREE_SITES)

    # Execute
    with pytest.raises(RunFailedError, match="RuntimeError: orchestration broke") as failed:
        run_engine(tiny_overrides(dirs, tmp_path / "run", 1))

    # Assert: the message names the log, which holds the traceback; Ray is gone
    assert str(tmp_path / "run" / FLOWER_LOG) in str(failed.value)
    log = (tmp_path / "run" / FLOWER_LOG).read_text()
    assert "Traceback" in log and "orchestration broke" in log
    assert not ray.is_initialized()


def test_a_run_without_results_fails_naming_its_log_and_last_error(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / FLOWER_LOG).write_text("INFO start\nERROR ServerApp raised: boom\nINFO end\n")

    # Execute / Assert: exit code 0 but no results is a failure too
    with pytest.raises(RunFailedError) as failed:
        check_finished(tmp_path, 0)
    assert str(tmp_path / FLOWER_LOG) in str(failed.value) and "boom" in str(failed.value)
    (tmp_path / RESULTS_FILE).write_text("{}")
    with pytest.raises(RunFailedError, match="exit code 3"):
        check_finished(tmp_path, 3)
    assert check_finished(tmp_path, 0) == tmp_path


def test_the_backend_owns_its_ray_and_asks_for_no_gpu_torch_cannot_see() -> None:
    # Execute
    quiet = backend_config(0.5, echo=False)
    shown = backend_config(0.0, echo=True)

    # Assert
    import torch

    assert quiet["init_args"]["address"] == "local"  # never someone else's Ray cluster
    assert quiet["client_resources"] == {
        "num_cpus": 1, "num_gpus": 0.5 if torch.cuda.is_available() else 0.0}
    assert quiet["init_args"]["log_to_driver"] is False
    assert shown["init_args"]["log_to_driver"] is True


def _site_d_pids(log: Path) -> set[int]:
    """The processes whose record says site_d cannot join (its ClientApp's, in Ray actors)."""
    return {int(p) for p in re.findall(r"\[pid (\d+)\]: site site_d cannot join the run",
                                       log.read_text())}


def _metrics(run_dir: Path) -> dict[str, object]:
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    return {task: entry.get("value") for task, entry in results["tasks"].items()}


@pytest.mark.slow
def test_a_kept_engine_reuses_ray_and_its_actors_and_gives_the_same_results(
    tmp_path: Path,
) -> None:
    # Prepare: site_d breaks, so each run's ClientApps log a record naming their process
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from unicon_flower.engine import KeptEngine, run_engine

    dirs = make_sites(tmp_path / "sites", [*THREE_SITES, ("site_d", CLS_TASK, 24)])
    break_label(dirs[3])
    original = raybackend.RayBackend

    # Execute: two runs in one kept engine (the first on fresh actors, as a run of its own)
    with KeptEngine() as engine:
        first = run_engine(tiny_overrides(dirs, tmp_path / "first", 1))
        assert ray.is_initialized()  # kept between the runs
        actors = {a._actor_id.hex() for a in engine.pool.pool}
        warm = run_engine(tiny_overrides(dirs, tmp_path / "warm", 1))
        kept_pools = engine.pools_started
        assert {a._actor_id.hex() for a in engine.pool.pool} == actors  # the same actors
        ray.kill(engine.pool.pool[0])  # a lost actor: the next run starts a fresh pool
        fresh = run_engine(tiny_overrides(dirs, tmp_path / "fresh", 1))

    # Assert: one pool for the first two runs, the same actors, each run's records in its
    # own log; a third pool-less run after the loss
    assert (kept_pools, engine.pools_started, engine.runs) == (1, 2, 3)
    assert _site_d_pids(fresh / FLOWER_LOG).isdisjoint(_site_d_pids(first / FLOWER_LOG))
    first_pids, warm_pids = (_site_d_pids(d / FLOWER_LOG) for d in (first, warm))
    assert first_pids and warm_pids and os.getpid() not in warm_pids  # each in its own log
    # ... the same results on warm actors as on fresh ones; Ray and Flower's class restored
    assert _metrics(first) == _metrics(warm) and all(
        isinstance(v, float) for v in _metrics(warm).values())
    assert not ray.is_initialized() and raybackend.RayBackend is original


def test_a_kept_engine_refuses_another_flower_and_a_second_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flwr
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from unicon_flower.engine import KeptEngine

    original = raybackend.RayBackend
    with KeptEngine():
        assert raybackend.RayBackend is not original
        with pytest.raises(RuntimeError, match="open already"), KeptEngine():
            pass
    assert raybackend.RayBackend is original
    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    with pytest.raises(RuntimeError, match=r"Flower 1\.41\.x's simulation engine; this is "
                                           r"Flower 1\.42\.0"), KeptEngine():
        pass
    assert raybackend.RayBackend is original


class _Pool:
    """Flower's actor pool as the kept engine reads it: idle actors, their count, futures."""

    def __init__(self, idle: int, actors: int) -> None:
        self.pool, self.num_actors = [object()] * idle, actors
        self._future_to_actor: dict[object, object] = {}
        self.ended = False

    def terminate_all_actors(self) -> None:
        self.ended = True


def test_a_kept_engine_keeps_a_pool_only_when_every_actor_is_back() -> None:
    from unicon_flower.engine import KeptEngine

    engine = KeptEngine()
    idle = _Pool(2, 2)
    engine.keep(idle, "cpu")
    assert engine.pool is idle and engine.runs == 1 and not idle.ended
    busy = _Pool(1, 2)  # an actor still out with a message
    engine.keep(busy, "cpu")
    assert engine.pool is None and busy.ended and engine.runs == 1
    engine.keep(None, "cpu")  # a run that built no pool
    assert engine.pool is None
