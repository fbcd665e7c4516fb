"""Wall time of the Flower simulation (``flwr run``) vs the same federation in process.

Same tasks, sites, rounds, local steps and per-round evaluation, measured one after the other in
one process: ``run_federated`` (the real ``flwr run`` local simulation, SuperLink start-up
included) and :func:`unicon_flower.runner.run_in_process` (the same ServerApp strategy and
ClientApp, messages serialised as on the wire, without Flower's runtime: since issue #16 there
is no second, plain training loop to compare with). The flwr time is split with the server's
own clock (``results.json`` ``timing``): Flower start-up until the ServerApp runs, the query
round (the first ClientApp calls), the training rounds, and shut-down.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from unicon_core.config import BackboneConfig, TrainConfig
from unicon_core.federation.outputs import RESULTS_FILE
from unicon_flower.runner import RunSettings, run_in_process


def measure_overhead(
    sites: list[Any], site_dirs: list[Path], overrides: list[str], backbone: BackboneConfig,
    rounds: int, train: TrainConfig, run_dir: Path,
) -> dict[str, float]:
    """Seconds of both, and their ratio (flwr / plain)."""
    from unicon_flower.launcher import run_federated

    settings = RunSettings(base=tuple(overrides), seed=train.seed, rounds=rounds,
                           local_steps=int(train.max_steps or 1), batch_size=train.batch_size,
                           lr=train.lr)  # both runs: the same typed settings
    fed_overrides = [*settings.overrides(site_dirs, run_dir / "flwr_run"),
                     f"federation.runs_dir='{run_dir}'"]
    launched, t0 = time.time(), time.perf_counter()
    run_federated(fed_overrides)
    flwr_s = time.perf_counter() - t0
    timing = json.loads((run_dir / "flwr_run" / RESULTS_FILE).read_text())["timing"]

    t0 = time.perf_counter()
    in_process = run_in_process(site_dirs, run_dir / "in_process_run", settings)
    plain_s = time.perf_counter() - t0
    in_rounds_s = float(in_process.results["timing"]["rounds_s"])
    startup_s = timing["started"] - launched
    return {"flwr_s": flwr_s, "plain_s": plain_s, "ratio": flwr_s / plain_s,
            "startup_s": startup_s, "query_s": timing["query_s"],
            "rounds_s": timing["rounds_s"],
            "shutdown_s": flwr_s - startup_s - timing["query_s"] - timing["rounds_s"],
            "rounds_ratio": timing["rounds_s"] / in_rounds_s,
            "comparator": "in-process federation (unicon_flower.runner)",
            "sites": len(sites), "rounds": rounds, "local_steps": int(train.max_steps or 0)}
