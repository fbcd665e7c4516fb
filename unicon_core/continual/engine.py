"""What a continual strategy asks of the federated engine, and what it gets back.

The strategies (``baselines/``) decide what trains where: which sites, which plan
(:mod:`unicon_core.training.plans`), from which starting state, through which site views. The
engine that runs it is the product's own federation (ServerApp strategy + ClientApp) and lives
in the Flower layer (:func:`unicon_flower.continual.federated_engine`); it reaches a strategy
through :attr:`~unicon_core.continual.runner.RunContext.engine`, so this package imports no
Flower, server or client code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: task -> plan key -> array: what a federated run starts from or ends with, per task
States = dict[str, dict[str, np.ndarray]]


@dataclass
class FederatedJob:
    """One federated run a strategy asks for.

    ``sites`` are site names of the run's continual config (one node each); ``views`` replace a
    site by a view of it (:mod:`unicon_core.continual.sites`). ``model(task)``, ``local_loss``
    and ``on_site`` are in-process research hooks (the strategy's own model, a plugin's loss
    term, the training site's name); any of them, or a plan other than ``skill``, makes the
    sites run as research sites (they must allow it). ``rounds``/``local_steps`` default to the
    continual config's.
    """

    sites: list[str]
    run_dir: Path
    plan: str = "skill"
    initial: Mapping[str, Mapping[str, Any]] | None = None
    rounds: int | None = None
    local_steps: int | None = None
    evaluate: bool = True
    eval_split: str = "test"
    views: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    model: Callable[[str], Any] | None = None
    local_loss: Callable[[str, Any, str], Any] | None = None
    on_site: Callable[[str], None] | None = None

    @property
    def research(self) -> bool:
        """Whether the job needs research sites (more than a skill, or hooks)."""
        return bool(self.plan != "skill" or self.views or self.model or self.local_loss
                    or self.on_site)


@dataclass
class FederatedOutcome:
    """The final state per task, the per-round records and the run's results.json."""

    states: States
    rounds: list[dict[str, Any]]
    results: dict[str, Any]
    run_dir: Path
    wall_s: float = 0.0

    def curve(self, task: str, metric: str) -> list[float | None]:
        """``task``'s evaluated ``metric`` after each round (None where not evaluated)."""
        out = []
        for r in self.rounds:
            value = r.get("tasks", {}).get(task, {}).get(metric)
            out.append(None if value is None or not math.isfinite(value) else float(value))
        return out

    @property
    def bytes_down_per_site_round(self) -> float:
        """Mean bytes the server sent one site per round (train + evaluate instructions)."""
        return float(self.results["communication"]["bytes_down_per_site_round"])

    @property
    def bytes_up_per_site_round(self) -> float:
        """Mean bytes one site sent per round (both replies)."""
        return float(self.results["communication"]["bytes_up_per_site_round"])


class Engine(Protocol):
    """Runs a :class:`FederatedJob` for a run context."""

    def __call__(self, ctx: Any, job: FederatedJob) -> FederatedOutcome:
        """Run ``job`` with ``ctx``'s seed, budget, sites and overrides."""
        ...
