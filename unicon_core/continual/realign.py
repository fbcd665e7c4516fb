"""Skill re-alignment after the foundation changes (issue #15, item 4).

When a stage refines the shared backbone, every earlier skill now runs on a backbone it was not
trained on. Each earlier task is re-validated on its own validation data (at its sites): its
outputs before and after the change are compared (bit-identical or not) and its metric is
measured on both. A method that guarantees identical outputs (isolated skills, a frozen
backbone) is checked for exactly that; otherwise a task whose metric dropped by more than
``tolerance`` is briefly re-tuned (``retune``, e.g. a few local steps of its skill at its sites)
and measured again. Pure: everything that touches models or data comes in as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

#: task -> its outputs on its own validation data (same order every call)
Predict = Callable[[str], torch.Tensor]
#: (task, outputs) -> the task's primary metric (higher is better)
Score = Callable[[str, torch.Tensor], float]


@dataclass(frozen=True)
class RealignReport:
    """One earlier task after a backbone change."""

    task: str
    identical: bool  # outputs bit-identical before and after the change
    before: float  # metric on the old backbone
    after: float  # metric on the new backbone, before any re-tuning
    retuned: bool = False
    after_retune: float | None = None

    @property
    def delta(self) -> float:
        """``after - before`` (negative: the change hurt the task)."""
        return self.after - self.before

    @property
    def final(self) -> float:
        """The metric the task ends with (after re-tuning if it was re-tuned)."""
        return self.after_retune if self.after_retune is not None else self.after


def realign_skills(
    tasks: Sequence[str], predict_before: Predict, predict_after: Predict, score: Score,
    *, tolerance: float = 0.0, retune: Callable[[str], None] | None = None,
    guarantee_identical: bool = False,
) -> list[RealignReport]:
    """Re-validate each earlier task; re-tune those that lost more than ``tolerance``.

    ``guarantee_identical``: the method promises bit-identical outputs, so any difference is an
    error (raised, naming the tasks) rather than something to re-tune.
    """
    reports = []
    for task in tasks:
        old, new = predict_before(task), predict_after(task)
        identical = old.shape == new.shape and bool(torch.equal(old, new))
        before = score(task, old)
        after = before if identical else score(task, new)
        if identical or retune is None or before - after <= tolerance:
            reports.append(RealignReport(task, identical, before, after))
            continue
        retune(task)
        reports.append(RealignReport(task, identical, before, after, True,
                                     score(task, predict_after(task))))
    changed = [r.task for r in reports if not r.identical]
    if guarantee_identical and changed:
        raise ValueError(f"outputs changed although the method guarantees them: {changed}")
    return reports
