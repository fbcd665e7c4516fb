"""Stage configs are validated eagerly and resolved against the sites' tasks."""

from __future__ import annotations

import pytest

from unicon_core.continual.stages import (
    ContinualConfig,
    Stage,
    last_trained,
    plan_stages,
    task_order,
)

TASKS = {"a1": "cls", "a2": "cls", "a3": "cls", "c1": "ct", "p1": "ctpet"}


def test_plan_tracks_new_and_retrained_tasks() -> None:
    # Prepare
    cfg = ContinualConfig(stages=[Stage("s0", ["a1", "a2"]), Stage("s1", ["c1"]),
                                  Stage("s2", ["a3", "p1"], {"ctpet": "ct"})])
    # Execute
    plans = plan_stages(cfg, TASKS)
    # Assert
    assert task_order(plans) == ["cls", "ct", "ctpet"]
    assert plans[2].new_tasks == ["ctpet"] and plans[2].trained_tasks == ["cls", "ctpet"]
    assert last_trained(plans) == {"cls": 2, "ct": 1, "ctpet": 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stages": []}, "at least one stage"),
        ({"stages": [Stage("s", ["a1"]), Stage("s", ["a2"])]}, "unique"),
        ({"stages": [Stage("s", ["a1"]), Stage("t", ["a1"])]}, "joins once"),
        ({"stages": [Stage("s", ["a1"])], "rounds": 0}, "rounds"),
        ({"stages": [Stage("s", ["a1"])], "seeds": [1, 1]}, "distinct seeds"),
        ({"stages": [Stage("s", ["a1"])], "data_root": "relative"}, "absolute"),
    ],
)
def test_invalid_configs_name_the_problem(kwargs, message) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        ContinualConfig(**kwargs)


def test_empty_stage_and_bad_expansion_are_refused() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="at least one joining site"):
        Stage("s", [])
    cfg = ContinualConfig(stages=[Stage("s0", ["p1"], {"ctpet": "ct"})])
    with pytest.raises(ValueError, match="earlier stage"):
        plan_stages(cfg, TASKS)
    cfg = ContinualConfig(stages=[Stage("s0", ["c1"]), Stage("s1", ["a1"], {"ct": "cls"})])
    with pytest.raises(ValueError, match="joining at this stage"):
        plan_stages(cfg, TASKS)
    with pytest.raises(ValueError, match="unknown sites"):
        plan_stages(ContinualConfig(stages=[Stage("s0", ["zz"])]), TASKS)


def test_from_dict_names_unknown_keys() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="unknown keys"):
        ContinualConfig.from_dict({"stages": [{"name": "s", "sites": ["a"]}], "round": 2})
    cfg = ContinualConfig.from_dict({"stages": [{"name": "s", "sites": ["a"]}]})
    assert isinstance(cfg.stages[0], Stage)
