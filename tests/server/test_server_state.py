"""The strategy state a resumed run needs: dumped by name and restored for the run's sites
and tasks, with what no longer applies left out and named."""

from __future__ import annotations

import numpy as np
import pytest

from server.strategies.server_state import dump_state, restore_state
from unicon_core.federation.config import TaskFederation
from unicon_core.federation.server_opt import ServerOptimizer

OPTIONS = {"cls": TaskFederation(server_opt="fedadam"), "seg": TaskFederation(lora_rule="fedsa"),
           "surv": TaskFederation(scaffold=True)}
TASK_OF = {"a": "cls", "b": "seg", "c": "surv"}


def _state() -> dict[str, np.ndarray]:
    opt = ServerOptimizer(OPTIONS["cls"].server_opt_config(), m={"w": np.arange(3.0)},
                          v={"w": np.ones(3)}, steps=4)
    return dump_state({"cls": opt}, {"b": {"adapter.x.lora_B.weight": np.full((2, 2), 5.0)}})


def test_dump_then_restore_gives_back_the_optimiser_and_fedsa_state() -> None:
    state = _state()
    assert sorted(state) == ["fedsa/b/adapter.x.lora_B.weight", "opt/cls/m/w", "opt/cls/steps",
                             "opt/cls/v/w"]
    back = restore_state(state, TASK_OF, OPTIONS.__getitem__)
    opt = back.server_opts["cls"]
    assert opt.steps == 4 and opt.cfg.name == "fedadam"
    np.testing.assert_array_equal(opt.m["w"], np.arange(3.0))
    np.testing.assert_array_equal(opt.v["w"], np.ones(3))
    np.testing.assert_array_equal(back.personal["b"]["adapter.x.lora_B.weight"],
                                  np.full((2, 2), 5.0))
    assert not back.dropped and not back.restarted


def test_state_that_no_longer_applies_is_left_out_and_named() -> None:
    """A task that dropped its server optimiser or FedSA, a site no longer in the run, and a
    SCAFFOLD ``c`` from an older checkpoint (restarts at zero) are not restored."""
    plain = {task: TaskFederation(scaffold=task == "surv") for task in OPTIONS}
    state = {**_state(), "scaffold/surv/w": np.zeros(3), "fedsa/gone/k": np.zeros(1)}
    back = restore_state(state, TASK_OF, plain.__getitem__)
    assert not back.server_opts and not back.personal
    assert back.dropped == {"opt/cls", "fedsa/b", "fedsa/gone"}
    assert back.restarted == {"surv"}


@pytest.mark.parametrize(("name", "match"), [
    ("momentum/cls/x", "unknown kind 'momentum'"),
    ("opt/cls/w", "is not optimiser state"),
])
def test_a_name_of_no_known_kind_is_an_error(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        restore_state({name: np.zeros(1)}, TASK_OF, OPTIONS.__getitem__)
