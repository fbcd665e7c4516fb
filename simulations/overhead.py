"""Wall time of the Flower simulation (``flwr run``) vs the same training in a plain loop.

Same tasks, sites, rounds, local steps and per-round evaluation, measured one after the other in
one process: ``run_federated`` (the real ``flwr run`` local simulation, SuperLink start-up
included) and :func:`~unicon_core.continual.fedloop.fedavg_loop` over the same skills. The
flwr time is split with the server's own clock (``results.json`` ``timing``): Flower start-up
until the ServerApp runs, the query round (the first ClientApp calls), the training rounds,
and shut-down.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from unicon_core.config import BackboneConfig, TrainConfig
from unicon_core.continual.baselines.lora import plan as lora_plan
from unicon_core.continual.fedloop import Client, EvalSite, fedavg_loop
from unicon_core.federation.outputs import RESULTS_FILE
from unicon_core.model import UniconModel


def measure_overhead(
    sites: list[Any], site_dirs: list[Path], overrides: list[str], backbone: BackboneConfig,
    rounds: int, train: TrainConfig, run_dir: Path,
) -> dict[str, float]:
    """Seconds of both, and their ratio (flwr / plain)."""
    from unicon_core.commands.federated import run_federated
    from unicon_core.federation.config import site_dirs_override

    fed_overrides = [*overrides, site_dirs_override(site_dirs), f"federation.rounds={rounds}",
                     f"train.max_steps={train.max_steps}", "train.epochs=10000",
                     f"train.batch_size={train.batch_size}", f"train.lr={train.lr}",
                     f"seed={train.seed}", f"federation.runs_dir='{run_dir}'",
                     f"federation.run_dir='{run_dir / 'flwr_run'}'"]
    launched, t0 = time.time(), time.perf_counter()
    run_federated(fed_overrides)
    flwr_s = time.perf_counter() - t0
    timing = json.loads((run_dir / "flwr_run" / RESULTS_FILE).read_text())["timing"]

    t0 = time.perf_counter()
    model = UniconModel(backbone, seed=train.seed)
    tasks: dict[str, list[Any]] = {}
    for site in sites:
        tasks.setdefault(site.task_spec.name, []).append(site)
    for task, members in sorted(tasks.items()):
        model.add_task(members[0].task_spec)
        clients = [Client(s.name, s.dataset("train", train=True), int(train.max_steps or 1),
                          s.synthetic) for s in members]
        evals = [EvalSite(s.name, s.dataset("test")) for s in members]
        fedavg_loop(model, task, clients, evals, lora_plan, rounds=rounds, train=train)
    plain_s = time.perf_counter() - t0
    startup_s = timing["started"] - launched
    return {"flwr_s": flwr_s, "plain_s": plain_s, "ratio": flwr_s / plain_s,
            "startup_s": startup_s, "query_s": timing["query_s"],
            "rounds_s": timing["rounds_s"],
            "shutdown_s": flwr_s - startup_s - timing["query_s"] - timing["rounds_s"],
            "rounds_ratio": timing["rounds_s"] / plain_s,
            "sites": len(sites), "rounds": rounds, "local_steps": int(train.max_steps or 0)}
