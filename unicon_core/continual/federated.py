"""One stage on the real federated path: the ServerApp logic and the ClientApp, in process.

:func:`run_federated_stage` runs :func:`server.federation.run_federation` against the real
ClientApp over the in-process Grid of the federated tests (every message serialised to
protobuf and back, as on the wire; all sites in one process, deterministic). A stage starts
from given skills (a task continuing with more sites, or a task expanded from another one)
through the run's own checkpoint: the initial skills are written as round 0 and the run resumes
from them, the same mechanism as ``resume=true``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class FederatedStageResult:
    """The global skills after the stage, per-round records and the run's results.json."""

    skills: dict[str, dict[str, np.ndarray]]
    rounds: list[dict[str, Any]]
    results: dict[str, Any]
    run_dir: Path


def stage_overrides(
    base: Sequence[str], site_dirs: Sequence[Path], run_dir: Path
) -> list[str]:
    """Hydra overrides of one stage run (sites, run folder, no wandb, no plots)."""
    from unicon_core.federation.config import site_dirs_override

    return [*base, site_dirs_override(site_dirs), f"federation.run_dir='{run_dir}'",
            "federation.wandb=disabled", "federation.plots=false"]


def run_federated_stage(
    base_overrides: Sequence[str],
    site_dirs: Sequence[Path],
    run_dir: Path,
    initial: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> FederatedStageResult:
    """Federated rounds of the tasks of ``site_dirs`` (real server and client code)."""
    from client.client_app import make_client_app
    from server.checkpoint import load_checkpoint
    from server.federation import run_federation
    from unicon_core.federation.aggregation import slice_task, tasks_of
    from unicon_core.federation.config import load_settings
    from unicon_core.federation.inprocess import InProcessGrid
    from unicon_core.federation.outputs import RESULTS_FILE, ROUNDS_FILE, read_jsonl

    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = stage_overrides(base_overrides, site_dirs, run_dir)
    grid = InProcessGrid(make_client_app(overrides), len(site_dirs))
    run_federation(grid, load_settings(overrides), initial=initial)
    arrays = load_checkpoint(run_dir).arrays
    skills = {t: slice_task(arrays, t) for t in tasks_of(arrays)}
    return FederatedStageResult(
        skills=skills,
        rounds=read_jsonl(run_dir / ROUNDS_FILE),
        results=json.loads((run_dir / RESULTS_FILE).read_text()),
        run_dir=run_dir,
    )
