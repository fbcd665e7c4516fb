"""Skill re-alignment after a backbone change, with callables standing for sites and models."""

from __future__ import annotations

import pytest
import torch

from unicon_core.continual.realign import realign_skills

LABELS = torch.tensor([0, 1, 1, 0])


def _accuracy(task: str, outputs: torch.Tensor) -> float:
    return float((outputs.argmax(1) == LABELS).float().mean())


GOOD = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0], [1.0, 0.0]])  # accuracy 1.0
WORSE = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])  # accuracy 0.5
NUDGED = GOOD + 1e-6  # not bit-identical, same accuracy


def test_identical_outputs_are_reported_and_never_retuned() -> None:
    # Prepare
    retuned: list[str] = []
    # Execute
    reports = realign_skills(["a"], lambda t: GOOD, lambda t: GOOD.clone(), _accuracy,
                             retune=retuned.append, guarantee_identical=True)
    # Assert
    assert reports[0].identical and reports[0].delta == 0.0 and not reports[0].retuned
    assert retuned == []


def test_a_guarantee_broken_is_an_error() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="'b'"):
        realign_skills(["a", "b"], lambda t: GOOD,
                       lambda t: GOOD if t == "a" else NUDGED, _accuracy,
                       guarantee_identical=True)


def test_only_tasks_that_lost_more_than_the_tolerance_are_retuned() -> None:
    # Prepare: "a" moved but kept its accuracy, "b" lost 0.5; re-tuning restores b
    after = {"a": NUDGED, "b": WORSE}
    retuned: list[str] = []

    def retune(task: str) -> None:
        retuned.append(task)
        after[task] = GOOD

    # Execute
    reports = realign_skills(["a", "b"], lambda t: GOOD, lambda t: after[t], _accuracy,
                             tolerance=0.1, retune=retune)
    # Assert
    a, b = reports
    assert not a.identical and a.delta == 0.0 and not a.retuned
    assert not b.identical and b.delta == -0.5 and b.retuned
    assert b.after_retune == 1.0 and b.final == 1.0 and a.final == 1.0
    assert retuned == ["b"]


def test_without_a_retune_hook_the_drop_is_only_measured() -> None:
    # Execute
    (report,) = realign_skills(["b"], lambda t: GOOD, lambda t: WORSE, _accuracy)
    # Assert
    assert report.delta == -0.5 and not report.retuned and report.final == 0.5
