"""One in-process federation: the real ServerApp logic and the real ClientApp over site folders.

Every in-process run (tests, benchmarks, the continual strategies) goes through
:func:`run_in_process`: :func:`server.federation.run_federation` drives the ClientApp of
:func:`client.client_app.make_client_app` over an :class:`~unicon_flower.inprocess.InProcessGrid`
(every message serialised to protobuf and back, as on the wire; deterministic). The run writes
its usual folder (``rounds.jsonl``, ``results.json``, checkpoint); :class:`RunResult` hands back
the final per-task states, the round records, the results and the grid (every exchange).

:class:`RunSettings` are the typed settings of such a run; they become hydra overrides only
here, at the Flower run-config boundary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unicon_flower.inprocess import InProcessGrid

if TYPE_CHECKING:
    from client.site_runner import SiteHooks

#: Node config of a research site: it allows research plans, and sends no router statistics
#: (a view's rows need not match its folder's; the baselines never route).
RESEARCH_NODE = {"allow-research-plans": True, "router-min-count": 10**9}


@dataclass(frozen=True)
class RunSettings:
    """Typed settings of an in-process run; ``None`` keeps the experiment's value.

    ``base`` are the experiment's own hydra overrides (``experiment=...``, backbone, data
    root); the fields below are applied after them.
    """

    base: tuple[str, ...] = ()
    seed: int | None = None
    rounds: int | None = None
    local_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    plan: str = "skill"
    evaluate: bool = True
    eval_split: str | None = None
    extra: tuple[str, ...] = ()

    def overrides(self, site_dirs: Sequence[Path], run_dir: Path) -> list[str]:
        """Hydra overrides of the run (sites, run folder, no wandb, no plots)."""
        from unicon_core.federation.config import site_dirs_override

        out = list(self.base)
        if self.seed is not None:
            out.append(f"seed={self.seed}")
        if self.rounds is not None:
            out.append(f"federation.rounds={self.rounds}")
        if self.local_steps is not None:
            out += [f"train.max_steps={self.local_steps}", "train.epochs=10000"]
        if self.batch_size is not None:
            out.append(f"train.batch_size={self.batch_size}")
        if self.lr is not None:
            out.append(f"train.lr={self.lr}")
        if self.plan != "skill":
            out.append(f"federation.plan={self.plan}")
        if not self.evaluate:
            out.append("federation.evaluate=false")
        if self.eval_split is not None:
            out.append(f"federation.eval_split={self.eval_split}")
        return [*out, *self.extra, site_dirs_override(site_dirs),
                f"federation.run_dir='{run_dir}'", "federation.wandb=disabled",
                "federation.plots=false"]


@dataclass
class RunResult:
    """What an in-process run produced."""

    run_dir: Path
    arrays: dict[str, np.ndarray]
    rounds: list[dict[str, Any]]
    results: dict[str, Any]
    grid: InProcessGrid
    wall_s: float = 0.0
    states: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def node_configs(num_nodes: int, research: bool = False,
                 extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Simulation node configs (partition ids); research sites allow research plans."""
    return [{"partition-id": i, "num-partitions": num_nodes,
             **(RESEARCH_NODE if research else {}), **dict(extra or {})}
            for i in range(num_nodes)]


def run_overrides(
    overrides: Sequence[str],
    num_nodes: int,
    *,
    client_overrides: Sequence[str] = (),
    initial: Mapping[str, Mapping[str, Any]] | None = None,
    research: bool = False,
    hooks: SiteHooks | None = None,
    mods: Sequence[Callable[..., Any]] = (),
    configs: Sequence[dict[str, Any]] | None = None,
) -> InProcessGrid:
    """Run the federation of hydra ``overrides`` over ``num_nodes`` in-process nodes.

    ``research`` makes every node a research site (node config, as a site would set it);
    ``hooks``/``mods`` are the ClientApp's simulation-only hooks and extra mods.
    """
    from client.client_app import make_client_app
    from server.federation import run_federation
    from unicon_core.hydra_config import load_settings

    app = make_client_app([*overrides, *client_overrides], hooks=hooks, mods=mods)
    grid = InProcessGrid(app, num_nodes,
                         node_configs=list(configs) if configs is not None
                         else node_configs(num_nodes, research))
    run_federation(grid, load_settings(list(overrides)), initial=initial)
    return grid


def run_in_process(
    site_dirs: Sequence[Path],
    run_dir: Path,
    settings: RunSettings,
    *,
    initial: Mapping[str, Mapping[str, Any]] | None = None,
    research: bool = False,
    hooks: SiteHooks | None = None,
    mods: Sequence[Callable[..., Any]] = (),
) -> RunResult:
    """One federated run over ``site_dirs`` writing into ``run_dir``; its results and states.

    ``research`` (or a non-skill plan, or hooks) runs the sites as research sites.
    """
    from unicon_core.federation.aggregation import slice_task, tasks_of
    from unicon_core.federation.checkpoint import load_checkpoint
    from unicon_core.federation.outputs import RESULTS_FILE, ROUNDS_FILE, read_jsonl

    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    research = research or settings.plan != "skill" or hooks is not None
    grid = run_overrides(settings.overrides(site_dirs, run_dir), len(site_dirs),
                         initial=initial, research=research, hooks=hooks, mods=mods)
    wall = time.perf_counter() - start
    arrays = load_checkpoint(run_dir).arrays
    return RunResult(
        run_dir=run_dir, arrays=arrays, rounds=read_jsonl(run_dir / ROUNDS_FILE),
        results=json.loads((run_dir / RESULTS_FILE).read_text()), grid=grid, wall_s=wall,
        states={t: slice_task(arrays, t) for t in tasks_of(arrays)},
    )
