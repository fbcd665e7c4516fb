"""The matrix summaries on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from unicon_core.continual.matrix import (
    average_final,
    backward_transfer,
    forgetting,
    per_task_forgetting,
    summary,
)

NAN = math.nan


@pytest.mark.parametrize(
    ("matrix", "trained", "avg", "bwt", "forget"),
    [
        # isolated skills: values never move after training -> BWT exactly 0
        ([[0.8, 0.8, 0.8], [NAN, 0.6, 0.6], [NAN, NAN, 0.7]], [0, 1, 2], 0.7, 0.0, 0.0),
        # naive: task 0 drops 0.8 -> 0.5, task 1 drops 0.6 -> 0.4
        # forgetting = ((0.8-0.5) + (0.6-0.4)) / 2 = 0.25; avg = (0.5+0.4+0.9)/3 = 0.6
        ([[0.8, 0.6, 0.5], [NAN, 0.6, 0.4], [NAN, NAN, 0.9]], [0, 1, 2], 0.6, -0.25, 0.25),
        # the reference is the value right after training, not the best: task 0 peaks at 0.9;
        # forgetting = ((0.7-0.6) + (0.5-0.5)) / 2 = 0.05 (stage 2 trained a task not shown)
        ([[0.7, 0.9, 0.6], [NAN, 0.5, 0.5]], [0, 1], 0.55, -0.05, 0.05),
        # task 0 trains again at stage 1 (a site joins): reference is stage 1, not stage 0
        ([[0.6, 0.8, 0.7], [NAN, 0.5, 0.5], [NAN, NAN, 0.3]], [1, 1, 2], 0.5, -0.05, 0.05),
    ],
)
def test_summaries_match_hand_computed(matrix, trained, avg, bwt, forget) -> None:
    # Execute
    result = summary(matrix, trained)
    # Assert
    assert result["avg"] == pytest.approx(avg)
    assert result["bwt"] == pytest.approx(bwt)
    assert result["forgetting"] == pytest.approx(forget)


def test_isolated_bwt_is_exactly_zero_not_minus_zero() -> None:
    # Prepare
    matrix = [[0.8, 0.8], [NAN, 0.6]]
    # Execute / Assert
    assert backward_transfer(matrix, [0, 1]) == 0.0
    assert math.copysign(1.0, backward_transfer(matrix, [0, 1])) == 1.0


def test_tasks_trained_at_the_last_stage_are_not_counted() -> None:
    # Prepare
    matrix = [[0.5, 0.4], [NAN, 0.9]]
    # Execute
    per_task = per_task_forgetting(matrix, [0, 1])
    # Assert
    assert per_task[0] == pytest.approx(0.1)
    assert math.isnan(per_task[1])
    assert forgetting(matrix, [0, 1]) == pytest.approx(0.1)


def test_single_stage_has_no_bwt() -> None:
    # Execute / Assert
    assert math.isnan(backward_transfer([[0.7]], [0]))
    assert math.isnan(forgetting([[0.7]], [0]))
    assert average_final([[0.7]]) == pytest.approx(0.7)


def test_undefined_cells_are_left_out_of_the_average() -> None:
    # Execute / Assert
    assert average_final([[0.5, 0.6], [NAN, NAN]]) == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("matrix", "trained", "message"),
    [
        ([], [], "no task"),
        ([[0.1, 0.2], [0.3]], [0, 1], "rectangular"),
        ([[0.1, 0.2]], [0, 1], "one last-training stage per task"),
        ([[0.1, 0.2]], [2], "outside"),
    ],
)
def test_invalid_inputs_are_refused(matrix, trained, message) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        summary(matrix, trained)


@pytest.mark.parametrize(
    ("matrix", "reference", "fwt_value", "per_task"),
    [
        # task 1 joins at stage 1: 0.7 vs reference 0.6; task 2 at stage 2: 0.5 vs 0.6
        # fwt = ((0.7-0.6) + (0.5-0.6)) / 2 = 0.0; task 0 (stage 0) is not counted
        ([[0.8, 0.7, 0.6], [NAN, 0.7, 0.9], [NAN, NAN, 0.5]], [0.1, 0.6, 0.6], 0.0,
         [NAN, 0.1, -0.1]),
        # the value right after joining counts, not a later (better) one: 0.6 - 0.4 = 0.2
        ([[0.9, 0.9], [NAN, 0.6]], [0.9, 0.4], 0.2, [NAN, 0.2]),
    ],
)
def test_forward_transfer_matches_hand_computed(matrix, reference, fwt_value, per_task) -> None:
    # Execute
    from unicon_core.continual.matrix import fwt, per_task_forward_transfer

    values = per_task_forward_transfer(matrix, reference)
    # Assert
    assert fwt(matrix, reference) == pytest.approx(fwt_value)
    assert math.isnan(values[0])
    assert values[1:] == pytest.approx(per_task[1:])


def test_forward_transfer_single_stage_is_nan_and_summary_adds_it_only_with_a_reference() -> None:
    # Prepare
    from unicon_core.continual.matrix import bwt, forward_transfer

    matrix = [[0.8, 0.7], [NAN, 0.6]]
    # Execute / Assert
    assert math.isnan(forward_transfer([[0.5]], [0.4]))
    assert "fwt" not in summary(matrix, [0, 1])
    assert summary(matrix, [0, 1], [0.0, 0.5])["fwt"] == pytest.approx(0.1)
    assert bwt(matrix, [0, 1]) == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="reference"):
        forward_transfer(matrix, [0.5])


def test_fwt_against_a_reference_run() -> None:
    # Prepare: refined run vs isolated run; task 1 joins at stage 1: 0.75 vs 0.7
    from unicon_core.continual.matrix import fwt_against

    refined = [[0.8, 0.7], [NAN, 0.75]]
    isolated = [[0.8, 0.8], [NAN, 0.7]]
    # Execute / Assert
    assert fwt_against(refined, isolated) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="same stages"):
        fwt_against(refined, [[0.8, 0.8], [0.1, 0.7]])
