"""The runner's plugin switch: off by default, and an empty or disabled list changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from unicon_core.config import BackboneConfig
from unicon_core.continual.plugins import PLUGINS, build_plugins
from unicon_core.continual.runner import RunContext, run_continual
from unicon_core.continual.stages import ContinualConfig, Stage, StagePlan, plan_stages

SITES = {"a1": "task_a", "a2": "task_a", "b1": "task_b", "a3": "task_a"}


class FakeStrategy:
    """Deterministic values that depend on how often each task trained (no model)."""

    name = "fake"

    def __init__(self) -> None:
        self.trained: dict[str, int] = {}
        self.seen_plugins: list[list[Any]] = []

    def train_stage(self, plan: StagePlan, ctx: RunContext) -> dict[str, Any]:
        self.seen_plugins.append(list(ctx.plugins))
        for task in plan.trained_tasks:
            self.trained[task] = self.trained.get(task, 0) + 1
        return {"tasks": list(plan.trained_tasks)}

    def evaluate(self, task: str, plan: StagePlan, ctx: RunContext) -> dict[str, tuple[float, int]]:
        return {s: (0.5 + 0.1 * self.trained[task] - 0.01 * plan.index, 10)
                for s in ctx.task_sites(task, plan.index)}

    def init_from(self, target: str, source: str, ctx: RunContext) -> None:
        """Nothing to expand."""


def _ctx(tmp_path: Path, **extra: Any) -> RunContext:
    cfg = ContinualConfig(stages=[Stage("s0", ["a1", "a2"]), Stage("s1", ["b1"]),
                                  Stage("s2", ["a3"])], seeds=[0], **extra)
    return RunContext(cfg, 0, BackboneConfig(), tmp_path, {}, plan_stages(cfg, SITES))


def _comparable(result: Any) -> dict[str, Any]:
    out = result.to_dict()
    out.pop("wall_s")
    for log in out["logs"]:
        log.pop("train_s")
    return out


def test_plugins_are_off_by_default() -> None:
    # Execute
    cfg = ContinualConfig(stages=[Stage("s0", ["a1"])])
    # Assert
    assert cfg.plugins == [] and cfg.plugin_options == {}


def test_empty_or_disabled_plugins_give_todays_outputs(tmp_path: Path) -> None:
    # Prepare
    disabled = build_plugins(sorted(PLUGINS))
    for p in disabled:
        p.enabled = False
    # Execute
    today = _comparable(run_continual(FakeStrategy(), _ctx(tmp_path)))
    empty = _comparable(run_continual(FakeStrategy(), _ctx(tmp_path), []))
    strategy = FakeStrategy()
    off = _comparable(run_continual(strategy, _ctx(tmp_path), disabled))  # type: ignore[arg-type]
    # Assert
    assert today == empty == off
    assert today["matrix"][0] == pytest.approx([0.6, 0.59, 0.68])
    assert strategy.seen_plugins == [[], [], []]


def test_config_switch_builds_and_hands_plugins_to_the_strategy(tmp_path: Path) -> None:
    # Prepare
    ctx = _ctx(tmp_path, plugins=["lwf", "ewc"], plugin_options={"ewc": {"lam": 3.0}})
    strategy = FakeStrategy()
    # Execute
    result = _comparable(run_continual(strategy, ctx))
    # Assert: the fake strategy has no model, so plugins have nothing to do; values unchanged
    assert [p.name for p in strategy.seen_plugins[0]] == ["lwf", "ewc"]
    assert strategy.seen_plugins[0][1].lam == 3.0
    assert result == _comparable(run_continual(FakeStrategy(), _ctx(tmp_path)))


@pytest.mark.parametrize(
    ("extra", "match"),
    [({"plugins": ["nope"]}, "unknown"), ({"plugins": ["kd", "kd"]}, "duplicates"),
     ({"plugin_options": {"kd": {}}}, "not enabled")],
)
def test_plugin_config_is_validated(extra: dict[str, Any], match: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        ContinualConfig(stages=[Stage("s0", ["a1"])], **extra)
