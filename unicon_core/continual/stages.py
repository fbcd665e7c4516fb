"""Stages of a continual experiment: which sites (and so which tasks) join when.

A stage lists the site folders that join (names under ``data_root``); the tasks a stage trains
are the tasks those sites serve (each site folder declares its task). A site that serves a task
seen at an earlier stage makes that task train again with more sites. ``expand`` maps a task
joining at this stage to an earlier task whose skill it starts from (modality expansion, e.g.
``ctpet_seg: ct_seg``). Validated eagerly: every problem raises a ``ValueError`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _fail(fld: str, why: str) -> ValueError:
    return ValueError(f"continual.{fld}: {why}")


@dataclass
class Stage:
    """One stage: the sites joining, and optionally which new task starts from which skill."""

    name: str = field(default="stage", metadata={"help": "Short name shown in tables."})
    sites: list[str] = field(default_factory=list, metadata={"help": "Site folders joining."})
    expand: dict[str, str] = field(
        default_factory=dict, metadata={"help": "new task -> earlier task whose skill it reuses."}
    )

    def __post_init__(self) -> None:
        self.sites = [str(s) for s in self.sites]
        self.expand = {str(k): str(v) for k, v in dict(self.expand).items()}
        if not self.name:
            raise _fail("stages", "every stage needs a name")
        if not self.sites:
            raise _fail(f"stages.{self.name}.sites", "a stage needs at least one joining site")
        if len(set(self.sites)) != len(self.sites):
            raise _fail(f"stages.{self.name}.sites", f"duplicates in {self.sites}")


@dataclass
class ContinualConfig:
    """A continual experiment: stages, per-stage budget, seeds and the data root."""

    stages: list[Stage] = field(default_factory=list)
    data_root: str | None = field(default=None, metadata={"help": "Absolute folder of sites."})
    rounds: int = field(default=3, metadata={"help": "Federated rounds per stage."})
    local_steps: int = field(default=10, metadata={"help": "Optimiser steps per site and round."})
    batch_size: int = 16
    lr: float = 0.002
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    foundation_stage: bool = field(
        default=False,
        metadata={"help": "Train the backbone by full-model FedAvg on the first task first."},
    )
    adaptation_task: str = field(
        default="tumour_cls", metadata={"help": "Task the adaptation strategies are compared on."}
    )
    plugins: list[str] = field(
        default_factory=list,
        metadata={"help": "Foundation-refinement plugins (mds, kd, retrieval, lwf, ewc); "
                          "empty (default): off, results as without them."},
    )
    plugin_options: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"help": "Keyword options per plugin name."}
    )

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, Stage) else Stage(**dict(s)) for s in self.stages]
        self.seeds = [int(s) for s in self.seeds]
        if not self.stages:
            raise _fail("stages", "needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise _fail("stages", f"stage names must be unique, got {names}")
        sites = [site for s in self.stages for site in s.sites]
        if len(set(sites)) != len(sites):
            raise _fail("stages", f"a site joins once; repeated: {sorted(_repeated(sites))}")
        for name in ("rounds", "local_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise _fail(name, f"must be an integer >= 1, got {value!r}")
        if self.lr <= 0:
            raise _fail("lr", f"must be > 0, got {self.lr}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise _fail("seeds", f"needs distinct seeds, got {self.seeds}")
        if self.data_root is not None and not Path(self.data_root).is_absolute():
            raise _fail("data_root", f"must be absolute, got {self.data_root!r}")
        self._check_plugins()

    def _check_plugins(self) -> None:
        from unicon_core.continual.plugins import PLUGINS

        self.plugins = [str(p) for p in self.plugins]
        self.plugin_options = {str(k): dict(v) for k, v in dict(self.plugin_options).items()}
        unknown = [p for p in self.plugins if p not in PLUGINS]
        if unknown:
            raise _fail("plugins", f"unknown {unknown}; known: {sorted(PLUGINS)}")
        if len(set(self.plugins)) != len(self.plugins):
            raise _fail("plugins", f"duplicates in {self.plugins}")
        stray = sorted(set(self.plugin_options) - set(self.plugins))
        if stray:
            raise _fail("plugin_options", f"options for plugins not enabled: {stray}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContinualConfig:
        """From the ``continual`` section of the resolved config, naming unknown keys."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"continual: unknown keys {unknown}")
        return cls(**data)

    def site_dir(self, site: str) -> Path:
        """Absolute folder of a site named in a stage."""
        if self.data_root is None:
            raise _fail("data_root", "must be set to find the sites")
        return Path(self.data_root) / site


def _repeated(items: list[str]) -> set[str]:
    return {x for x in items if items.count(x) > 1}


@dataclass(frozen=True)
class StagePlan:
    """A stage resolved against the site folders: which tasks it trains and which are new."""

    index: int
    stage: Stage
    site_tasks: dict[str, str]  # joining site -> its task
    new_tasks: list[str]  # tasks that appear for the first time
    trained_tasks: list[str]  # tasks whose skill trains at this stage (new or gaining sites)


def plan_stages(cfg: ContinualConfig, task_of_site: dict[str, str]) -> list[StagePlan]:
    """Resolve every stage (``task_of_site`` from the site folders); checks ``expand``."""
    seen: list[str] = []
    plans = []
    for index, stage in enumerate(cfg.stages):
        missing = [s for s in stage.sites if s not in task_of_site]
        if missing:
            raise _fail(f"stages.{stage.name}.sites", f"unknown sites {missing}")
        site_tasks = {s: task_of_site[s] for s in stage.sites}
        trained = list(dict.fromkeys(site_tasks.values()))
        new = [t for t in trained if t not in seen]
        for target, source in stage.expand.items():
            if target not in new:
                raise _fail(f"stages.{stage.name}.expand",
                            f"{target!r} must be a task joining at this stage (new: {new})")
            if source not in seen:
                raise _fail(f"stages.{stage.name}.expand",
                            f"{source!r} must be a task of an earlier stage (seen: {seen})")
        seen += new
        plans.append(StagePlan(index, stage, site_tasks, new, trained))
    return plans


def task_order(plans: list[StagePlan]) -> list[str]:
    """Tasks in the order they joined (the matrix's row order)."""
    return [t for p in plans for t in p.new_tasks]


def last_trained(plans: list[StagePlan]) -> dict[str, int]:
    """Stage index at which each task trained for the last time."""
    out: dict[str, int] = {}
    for plan in plans:
        for task in plan.trained_tasks:
            out[task] = plan.index
    return out
