"""SCAFFOLD's server side on hand-made arrays: ``c`` moves by the mean change over all the
task's sites, and a change that does not fit the trained layout is named."""

from __future__ import annotations

import numpy as np
import pytest

from unicon_core.federation.scaffold import control_problem, server_update, zero_control

LAYOUT = {"adapter.m.lora_B.weight": np.ones((4, 2), np.float32),
          "head.w": np.ones(3, np.float32)}


def test_c_moves_by_the_sum_of_changes_over_all_sites() -> None:
    c = {k: np.full_like(v, 0.5) for k, v in LAYOUT.items()}
    changes = [{k: np.full_like(v, 3.0) for k, v in LAYOUT.items()},
               {k: np.full_like(v, -1.0) for k, v in LAYOUT.items()}]
    # everyone answered (N = 2): c + mean change
    for value in server_update(c, changes, 2).values():
        np.testing.assert_allclose(value, 0.5 + 1.0)
    # 2 of 4 sites answered: each change counts 1/4
    for value in server_update(c, changes, 4).values():
        np.testing.assert_allclose(value, 0.5 + 0.5)
    for key, value in server_update(c, [], 4).items():  # nobody answered: c stays
        np.testing.assert_array_equal(value, c[key])
    with pytest.raises(ValueError, match="4 control changes for a task of 3"):
        server_update(c, changes * 2, 3)
    with pytest.raises(ValueError, match="num_sites"):
        server_update(c, [], 0)


def test_a_change_that_does_not_fit_is_named() -> None:
    zero = zero_control(LAYOUT)
    assert control_problem(zero, LAYOUT) == ""
    assert all(v.dtype == np.float32 and not v.any() for v in zero.values())
    assert "missing ['head.w']" in control_problem({"adapter.m.lora_B.weight": zero[
        "adapter.m.lora_B.weight"]}, LAYOUT)
    assert "extra ['adapter.m.lora_A.weight']" in control_problem(
        {**zero, "adapter.m.lora_A.weight": np.zeros((2, 3), np.float32)}, LAYOUT)
    assert "shape" in control_problem({**zero, "head.w": np.zeros(4, np.float32)}, LAYOUT)
    assert "dtype int64" in control_problem({**zero, "head.w": np.zeros(3, np.int64)}, LAYOUT)
    assert "1 non-finite" in control_problem(
        {**zero, "head.w": np.array([0, np.inf, 0], np.float32)}, LAYOUT)
