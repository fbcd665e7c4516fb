"""The task x stage matrix and the continual-learning summaries computed from it (pure functions).

``R[i][j]`` is task ``i``'s held-out primary metric (higher is better) evaluated right after stage
``j``; it is NaN before task ``i`` has joined. ``trained[i]`` is the stage after which task ``i``
was trained for the last time (a task trains again when a new site joins it).

Definitions (Avalanche's: the value right after training a task vs the final value, never the
best value seen):

* **average final metric**: ``mean_i R[i][T-1]`` over all tasks (NaN cells left out).
* **forgetting** of task ``i``: ``R[i][trained[i]] - R[i][T-1]``; the reported forgetting is the
  mean over tasks whose last training stage is not the final stage (the others cannot have
  forgotten anything yet). Positive means the task got worse after it was trained.
* **backward transfer (BWT)** of task ``i``: ``R[i][T-1] - R[i][trained[i]]`` (Lopez-Paz &
  Ranzato's BWT with "right after training" as reference), averaged over the same tasks, so
  ``BWT = -forgetting``; negative means later stages degraded earlier tasks.

With no task eligible (a single stage) BWT and forgetting are NaN, not 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def _check(matrix: Matrix, trained: Sequence[int]) -> int:
    if not matrix:
        raise ValueError("the matrix has no task")
    stages = len(matrix[0])
    if stages == 0 or any(len(row) != stages for row in matrix):
        raise ValueError("every task row needs one value per stage (a rectangular matrix)")
    if len(trained) != len(matrix):
        raise ValueError(f"need one last-training stage per task, got {len(trained)}")
    for i, t in enumerate(trained):
        if not 0 <= t < stages:
            raise ValueError(f"task {i}: last-training stage {t} is outside 0..{stages - 1}")
    return stages


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def final_values(matrix: Matrix) -> list[float]:
    """Each task's value after the last stage."""
    return [float(row[-1]) for row in matrix]


def average_final(matrix: Matrix) -> float:
    """Mean over tasks of the final value (NaN cells left out)."""
    return _mean(final_values(matrix))


def per_task_forgetting(matrix: Matrix, trained: Sequence[int]) -> list[float]:
    """``R[i][trained[i]] - R[i][T-1]`` per task; NaN for tasks last trained at the final stage."""
    stages = _check(matrix, trained)
    out = []
    for row, t in zip(matrix, trained, strict=True):
        out.append(math.nan if t == stages - 1 else float(row[t]) - float(row[-1]))
    return out


def forgetting(matrix: Matrix, trained: Sequence[int]) -> float:
    """Mean forgetting over the tasks not trained at the final stage (NaN if none)."""
    return _mean(per_task_forgetting(matrix, trained))


def backward_transfer(matrix: Matrix, trained: Sequence[int]) -> float:
    """Mean of ``R[i][T-1] - R[i][trained[i]]`` over the same tasks (``= -forgetting``)."""
    value = forgetting(matrix, trained)
    return 0.0 - value if math.isfinite(value) else math.nan  # 0.0, never -0.0


def summary(matrix: Matrix, trained: Sequence[int]) -> dict[str, float]:
    """``avg``, ``bwt`` and ``forgetting`` of one matrix."""
    return {
        "avg": average_final(matrix),
        "bwt": backward_transfer(matrix, trained),
        "forgetting": forgetting(matrix, trained),
    }
