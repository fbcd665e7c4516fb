"""Wall time of the Flower simulation (``flwr run``) vs the same federation in process.

Same tasks, sites, rounds, local steps and per-round evaluation, measured one after the other in
one process:

* **cold**: ``run_federated`` as one ``unicon federate`` runs it (Flower's local SuperLink started
  for the run and stopped after it);
* **kept SuperLink**: two runs on one :class:`unicon_flower.launcher.KeptSuperLink`, as a
  benchmark suite or a sweep runs them (the first starts the SuperLink, the second, **warm**,
  finds it running);
* **engine**: Flower's simulation engine in this process (``unicon federate --engine
  python-api``, :func:`unicon_flower.engine.run_engine`): no SuperLink, the ServerApp in a
  thread of this process, the ClientApps in Ray actors;
* **kept engine**: two engine runs in one :class:`unicon_flower.engine.KeptEngine`, as a
  benchmark suite runs them (the first starts Ray and the ClientApp actors, the second,
  **warm**, reuses them with their imports done);
* **in process**: :func:`unicon_flower.runner.run_in_process` (the same ServerApp strategy and
  ClientApp, messages serialised as on the wire, without Flower's runtime: since issue #16 there
  is no second, plain training loop to compare with);
* **longer** (``long_rounds``): a cold flwr run and an in-process run with more rounds, same
  sites and steps, so the table shows how the ratio moves with the run's length instead of
  asserting it, and where it would cross the goal (:func:`crossing_rounds`).

Each flwr time is split with the server's own clock (``results.json`` ``timing``): Flower
start-up until the ServerApp runs, the query round (the first ClientApp calls), the training
rounds, and shut-down. ``python -m simulations.run_benchmarks --only-overhead`` measures only
this and rewrites its section of BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from unicon_core.config import BackboneConfig, TrainConfig
from unicon_core.federation.outputs import RESULTS_FILE
from unicon_flower.runner import RunSettings, run_in_process


def _timed_flwr_run(overrides: list[str], run_dir: Path, superlink: Any = None,
                    engine: bool = False) -> dict[str, float]:
    """One ``flwr run`` into ``run_dir`` (with ``engine``: one run of Flower's simulation
    engine in this process instead, :func:`unicon_flower.engine.run_engine`): its seconds and
    their split by the server's clock."""
    from unicon_flower.engine import run_engine
    from unicon_flower.launcher import run_federated

    full = [*overrides, f"federation.run_dir='{run_dir}'"]
    launched, t0 = time.time(), time.perf_counter()
    if engine:
        run_engine(full)
    else:
        run_federated(full, superlink=superlink)
    total = time.perf_counter() - t0
    timing = json.loads((run_dir / RESULTS_FILE).read_text())["timing"]
    startup = timing["started"] - launched
    return {"total_s": total, "startup_s": startup, "query_s": timing["query_s"],
            "rounds_s": timing["rounds_s"],
            "shutdown_s": total - startup - timing["query_s"] - timing["rounds_s"]}


#: What every flwr run pays outside unicon's code, each timed in a fresh interpreter: a bare
#: start, Ray started and stopped as Flower's simulation runtime does it, and the model stack
#: that the ServerApp's process and each ClientApp actor import once.
FLOOR_SNIPPETS = {
    "python_s": "pass",
    "ray_s": "import ray; ray.init(include_dashboard=False); ray.shutdown()",
    "stack_s": "import torch, monai, peft",
}


def runtime_floor(python: str = sys.executable, snippets: dict[str, str] | None = None
                  ) -> dict[str, float]:
    """Wall seconds of each snippet (``python -c``) in its own fresh process, one after the
    other; a failing snippet raises with its output."""
    out = {}
    for key, code in (snippets or FLOOR_SNIPPETS).items():
        t0 = time.perf_counter()
        done = subprocess.run([python, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"timing {key} ({code!r}) failed: {done.stderr[-2000:]}")
        out[key] = time.perf_counter() - t0
    return out


def crossing_rounds(short: dict[str, float], long: dict[str, float], goal: float
                    ) -> float | None:
    """Rounds from which on ``flwr_s / plain_s`` stays at or below ``goal``, from two measured
    run lengths.

    Each side is a straight line through its two (rounds, seconds) points: a fixed start-up
    plus a cost per round. 0 when the ratio is within the goal at every length; ``None`` when
    longer runs never bring it there (the flwr side's cost per round is at least ``goal``
    times the in-process one's)."""
    span = long["rounds"] - short["rounds"]
    if span <= 0:
        raise ValueError(f"the longer run has {long['rounds']} rounds, the short one "
                         f"{short['rounds']}: it must have more")
    flwr_per = (long["flwr_s"] - short["flwr_s"]) / span
    plain_per = (long["plain_s"] - short["plain_s"]) / span
    flwr_fixed = short["flwr_s"] - flwr_per * short["rounds"]
    plain_fixed = short["plain_s"] - plain_per * short["rounds"]
    slope = goal * plain_per - flwr_per
    if slope <= 0:
        return None
    return max((flwr_fixed - goal * plain_fixed) / slope, 0.0)


def measure_overhead(
    sites: list[Any], site_dirs: list[Path], overrides: list[str], backbone: BackboneConfig,
    rounds: int, train: TrainConfig, run_dir: Path, long_rounds: int | None = None,
) -> dict[str, Any]:
    """Seconds of the cold flwr run, the two runs on a kept SuperLink, the engine run and the
    in-process run, and their ratios to the in-process run; with ``long_rounds`` also a cold
    flwr run, an engine run and an in-process run of that many rounds (``long``)."""
    if long_rounds is not None and long_rounds <= rounds:
        raise ValueError(f"long_rounds={long_rounds} must exceed rounds={rounds}")
    from unicon_flower.launcher import KeptSuperLink

    settings = RunSettings(base=tuple(overrides), seed=train.seed, rounds=rounds,
                           local_steps=int(train.max_steps or 1), batch_size=train.batch_size,
                           lr=train.lr)  # every run: the same typed settings
    fed_overrides = _flwr_overrides(settings, site_dirs, run_dir, run_dir / "flwr_run")
    cold = _timed_flwr_run(fed_overrides, run_dir / "flwr_run")
    with KeptSuperLink(run_dir / "kept_flwr_home") as link:
        first = _timed_flwr_run(fed_overrides, run_dir / "flwr_kept_first", link)
        warm = _timed_flwr_run(fed_overrides, run_dir / "flwr_kept_warm", link)
    engine = _timed_flwr_run(_flwr_overrides(settings, site_dirs, run_dir,
                                             run_dir / "engine_run"),
                             run_dir / "engine_run", engine=True)
    kept_engine = _kept_engine_runs(settings, site_dirs, run_dir)

    in_process, plain_s = _timed_in_process(site_dirs, run_dir / "in_process_run", settings)
    in_rounds_s = float(in_process.results["timing"]["rounds_s"])
    long = None if long_rounds is None else _longer(settings, site_dirs, run_dir, long_rounds)
    floor = runtime_floor()
    return {"flwr_s": cold["total_s"], "plain_s": plain_s, "ratio": cold["total_s"] / plain_s,
            **{k: cold[k] for k in ("startup_s", "query_s", "rounds_s", "shutdown_s")},
            "rounds_ratio": cold["rounds_s"] / in_rounds_s,
            "kept_first": first, "warm": warm, "warm_ratio": warm["total_s"] / plain_s,
            "engine": engine, "engine_ratio": engine["total_s"] / plain_s,
            **kept_engine, "engine_warm_ratio": kept_engine["engine_warm"]["total_s"] / plain_s,
            "comparator": "in-process federation (unicon_flower.runner)", "floor": floor,
            "cpus": os.cpu_count(),
            "sites": len(sites), "rounds": rounds, "local_steps": int(train.max_steps or 0),
            "long": long}


def _kept_engine_runs(settings: RunSettings, site_dirs: list[Path], run_dir: Path
                      ) -> dict[str, dict[str, float]]:
    """Two engine runs in one :class:`~unicon_flower.engine.KeptEngine`: the first starts
    Ray and the actors, the warm one reuses them."""
    from unicon_flower.engine import KeptEngine

    out = {}
    with KeptEngine() as kept:
        for name in ("engine_first", "engine_warm"):
            folder = run_dir / f"{name}_run"
            out[name] = _timed_flwr_run(_flwr_overrides(settings, site_dirs, run_dir, folder),
                                        folder, engine=True)
    if kept.pools_started != 1:  # the warm run would not be warm: say so, never report it
        raise RuntimeError(f"the kept engine started {kept.pools_started} actor pools for "
                           "two runs, expected 1")
    return out


def _longer(settings: RunSettings, site_dirs: list[Path], run_dir: Path, rounds: int
            ) -> dict[str, float]:
    """A cold flwr run, an engine run and an in-process run of ``rounds`` rounds, otherwise
    as ``settings``."""
    settings = replace(settings, rounds=rounds)
    flwr_dir = run_dir / f"flwr_run_{rounds}_rounds"
    cold = _timed_flwr_run(_flwr_overrides(settings, site_dirs, run_dir, flwr_dir), flwr_dir)
    engine_dir = run_dir / f"engine_run_{rounds}_rounds"
    engine = _timed_flwr_run(_flwr_overrides(settings, site_dirs, run_dir, engine_dir),
                             engine_dir, engine=True)
    _, plain_s = _timed_in_process(site_dirs, run_dir / f"in_process_run_{rounds}_rounds",
                                   settings)
    return {"rounds": rounds, "flwr_s": cold["total_s"], "plain_s": plain_s,
            "ratio": cold["total_s"] / plain_s, "engine_s": engine["total_s"],
            "engine_ratio": engine["total_s"] / plain_s}


def _flwr_overrides(settings: RunSettings, site_dirs: list[Path], run_dir: Path,
                    flwr_dir: Path) -> list[str]:
    """The overrides of a `flwr run` into ``flwr_dir``, with ``run_dir`` as its runs folder."""
    return [*settings.overrides(site_dirs, flwr_dir), f"federation.runs_dir='{run_dir}'"]


def _timed_in_process(site_dirs: list[Path], out_dir: Path, settings: RunSettings
                      ) -> tuple[Any, float]:
    """The in-process federation's result and its wall seconds."""
    t0 = time.perf_counter()
    result = run_in_process(site_dirs, out_dir, settings)
    return result, time.perf_counter() - t0
