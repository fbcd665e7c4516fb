"""Flower's simulation engine in this process: ``unicon federate --engine python-api``.

``flwr run`` (:mod:`unicon_flower.launcher`) starts Flower's local SuperLink, its SuperExec
and a ``flwr-simulation`` process, which imports torch, peft and MONAI once more for the
ServerApp before the first message leaves; a short run spends most of its time there
(BENCHMARKS.md, "Wall time"). :func:`run_engine` runs the same ServerApp
(:func:`server.server_app.make_server_app`) and ClientApp
(:func:`client.client_app.make_client_app`) under Flower's simulation engine inside the calling
process, through ``flwr.simulation.run_simulation``:

* the ServerApp runs in a thread of this process, whose model stack is already imported;
* each ClientApp runs in a Ray actor, one per CPU, as under ``flwr run``;
* no SuperLink, no SuperExec, no second ServerApp process.

The run writes the same run folder as ``flwr run`` (``results.json``, ``rounds.jsonl``,
checkpoint); Flower's log records go to its ``flower.log``: this process's (the ServerApp's)
and each ClientApp's (the ClientApp is given the run's log, and its lifespan appends them
there, :func:`unicon_core.console.app_lifespan`; each line names its process), e.g. a site's
egress guard refusing a reply or its privacy warnings. The rest of an actor's console output
stays in Ray's session logs (``/tmp/ray/session_*/logs``) unless ``-v`` shows it; a
ClientApp's error reaches the ServerApp as an error reply and is logged there, as under
``flwr run``.

``run_simulation`` is deprecated in Flower 1.41 ("will be removed in a future version"), so
``flwr run`` stays the default; this engine is for the many short runs of a benchmark or a
sweep, where Flower's start-up would dominate.

What every engine run still pays is Ray's start and each ClientApp actor's import of torch,
MONAI and peft (its query round). :class:`KeptEngine` keeps both for a suite of runs in one
process, as :class:`~unicon_flower.launcher.KeptSuperLink` keeps a SuperLink: the first run
starts Ray and the actors, the next ones reuse them, warm, and leaving the suite stops them.
Each run still builds its own ServerApp, ClientApp, nodes and contexts; only the processes
that run the ClientApps stay.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from unicon_core import console
from unicon_flower.launcher import (
    FLOWER_LOG,
    FLOWER_SWITCHES,
    RoundProgress,
    check_finished,
    prepare_run,
    site_gpus,
)

#: What the engine sets in this process for a run: Flower's switches (as ``flwr run``
#: gets them) and no Ray usage statistics.
ENGINE_ENV = {**FLOWER_SWITCHES, "RAY_USAGE_STATS_ENABLED": "0"}


def backend_config(gpus_per_site: float, echo: bool) -> dict[str, dict[str, object]]:
    """Flower's Ray backend config: one CPU (and ``gpus_per_site`` of a GPU) per ClientApp
    actor, a Ray of its own (``address="local"``: never a Ray cluster someone else runs on
    this machine), actors' output shown only when ``echo``."""
    return {"client_resources": {"num_cpus": 1, "num_gpus": site_gpus(gpus_per_site)},
            "init_args": {"address": "local", "log_to_driver": bool(echo),
                          "logging_level": "WARNING"}}


def run_engine(overrides: Sequence[str]) -> Path:
    """Run (or with ``resume=true`` continue) a federated experiment under Flower's
    simulation engine in this process; returns its run folder (as
    :func:`unicon_flower.launcher.run_federated`)."""
    from flwr.simulation import run_simulation

    from client.client_app import make_client_app
    from server.server_app import make_server_app
    from unicon_core.commands.errors import RunFailedError

    settings, run_dir, full = prepare_run(overrides)
    fed = settings.federation
    echo = console.verbosity() != console.QUIET
    with _environ(ENGINE_ENV), \
            _flower_log(run_dir / FLOWER_LOG, echo), \
            _progress(run_dir, fed.rounds, not echo):
        try:
            run_simulation(make_server_app(full),
                           make_client_app(full, app_log=str(run_dir / FLOWER_LOG)),
                           num_supernodes=len(fed.sites),
                           backend_config=backend_config(fed.gpus_per_site, echo))  # type: ignore[arg-type]
        except Exception as ex:  # the ServerApp raised: as flwr run's non-zero exit
            logging.getLogger("flwr").exception("the run failed")  # traceback to flower.log
            raise RunFailedError(
                f"the federated run failed ({type(ex).__name__}: {ex}); its output is in "
                f"{run_dir / FLOWER_LOG}") from ex
    return check_finished(run_dir, 0)


#: The Flower releases whose simulation internals :class:`KeptEngine` was written against:
#: ``start_vce`` builds its backend from ``raybackend.RayBackend`` at run time, and the backend
#: builds a ``BasicActorPool`` in ``build`` and ends it in ``terminate``.
KEPT_ENGINE_FLOWER = "1.41."
#: Seconds a kept actor has to answer Ray's readiness call before a run: one that does not
#: (it died, or hangs) makes the engine start a fresh pool.
ACTOR_READY_S = 30.0


class KeptEngine:
    """Ray and the ClientApp actors of :func:`run_engine` kept for every run inside ``with``.

    Inside, Flower's Ray backend (``raybackend.RayBackend``, which ``start_vce`` looks up for
    each run) is a subclass whose ``build`` takes the kept actor pool when one is kept for the
    same resources and every actor answers, and whose ``terminate`` keeps the pool when all
    its actors are back and idle (else ends them); Ray itself stays up. Leaving ends the
    actors, shuts Ray down and restores Flower's class. Ray keeps the first run's start
    arguments (:func:`backend_config`) and the actors the environment they started with;
    each run's ClientApp is given that run's log (``make_client_app(app_log=...)``). One at a
    time per process; only on the Flower releases of :data:`KEPT_ENGINE_FLOWER`, whose
    internals it replaces. ``runs``: the runs whose pool was kept afterwards.
    """

    _open: KeptEngine | None = None

    def __init__(self) -> None:
        self.pool: Any = None  # flwr's BasicActorPool, kept between runs
        self.resources = ""  # the client resources the pool was built for (JSON)
        self.pools_started = 0
        self.runs = 0
        self._restore: Callable[[], None] | None = None

    def __enter__(self) -> KeptEngine:
        import flwr
        from flwr.server.superlink.fleet.vce.backend import raybackend

        if not flwr.__version__.startswith(KEPT_ENGINE_FLOWER):
            raise RuntimeError(
                f"KeptEngine replaces internals of Flower {KEPT_ENGINE_FLOWER}x's simulation "
                f"engine; this is Flower {flwr.__version__}: run without it (each run then "
                "starts its own Ray and actors)")
        if KeptEngine._open is not None:
            raise RuntimeError("a KeptEngine is open already in this process")
        original = raybackend.RayBackend
        raybackend.RayBackend = _kept_backend(self, original)  # type: ignore[misc]

        def restore() -> None:
            raybackend.RayBackend = original  # type: ignore[misc]

        self._restore, KeptEngine._open = restore, self
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        import ray

        try:
            self._drop()
            if ray.is_initialized():
                ray.shutdown()
        finally:
            if self._restore is not None:
                self._restore()
            self._restore, KeptEngine._open = None, None

    def take(self, resources: str) -> Any:
        """The kept pool for ``resources`` when every actor answers; else None (a pool for
        other resources, or with an actor that does not answer, is ended)."""
        import ray

        if self.pool is not None and self.resources == resources:
            pings = [actor.__ray_ready__.remote() for actor in self.pool.pool]
            ready, _ = ray.wait(pings, num_returns=len(pings), timeout=ACTOR_READY_S)
            if len(ready) == len(pings):
                try:
                    ray.get(ready)
                    return self.pool
                except ray.exceptions.RayError:
                    pass
        self._drop()
        return None

    def keep(self, pool: Any, resources: str) -> None:
        """Keep ``pool`` for the next run when all its actors are idle, else end them."""
        if pool is None:
            return
        if pool.num_actors and len(pool.pool) == pool.num_actors and not pool._future_to_actor:
            self.pool, self.resources = pool, resources
            self.runs += 1
        else:  # an actor still busy or lost: the next run starts afresh
            pool.terminate_all_actors()
            self.pool = None

    def _drop(self) -> None:
        if self.pool is not None:
            self.pool.terminate_all_actors()
        self.pool, self.resources = None, ""


def _kept_backend(engine: KeptEngine, base: type) -> type:
    """Flower's Ray backend, keeping its actor pool and Ray in ``engine`` between runs."""

    class KeptRayBackend(base):  # type: ignore[misc,valid-type]
        """``RayBackend`` whose pool and Ray outlive the run (:class:`KeptEngine`)."""

        def build(self, app_fn: Callable[[], Any]) -> None:
            self.kept_key = json.dumps(self.client_resources, sort_keys=True)
            pool = engine.take(self.kept_key)
            if pool is None:
                super().build(app_fn)
                engine.pools_started += 1
            else:
                self.pool, self.app_fn = pool, app_fn

        def terminate(self) -> None:
            engine.keep(self.pool, getattr(self, "kept_key", ""))
            self.pool = None

    return KeptRayBackend


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` for the run (Ray's processes inherit them), and the
    environment restored afterwards (Flower's Ray backend also rewrites ``PYTHONPATH``)."""
    saved = {key: os.environ.get(key) for key in [*values, "PYTHONPATH"]}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _flower_log(path: Path, echo: bool) -> Iterator[None]:
    """Flower's log records of this process appended to ``path``; without ``echo`` they
    reach only that file (Flower's console handler is detached for the run)."""
    logger = logging.getLogger("flwr")
    path.parent.mkdir(parents=True, exist_ok=True)
    muted = [] if echo else [h for h in logger.handlers  # Flower's ConsoleHandler among them
                             if isinstance(h, logging.StreamHandler)
                             and not isinstance(h, logging.FileHandler)]
    for h in muted:
        logger.removeHandler(h)
    try:
        with console.log_file(path):
            yield
    finally:
        for h in muted:
            logger.addHandler(h)


@contextmanager
def _progress(run_dir: Path, rounds: int, show: bool) -> Iterator[None]:
    """A bar over the run's rounds (:class:`RoundProgress`), moved once a second while the
    run goes on in this process; nothing when not ``show``."""
    if not show or not rounds:
        yield
        return
    bar, stop = RoundProgress(run_dir, rounds), threading.Event()

    def poll() -> None:
        while not stop.wait(1.0):
            bar.poll()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.poll()
        bar.close()
