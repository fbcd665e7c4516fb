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

* **forward transfer (FWT)** of task ``i`` joining at stage ``j_i > 0``: ``R[i][j_i] - b_i``,
  where ``b_i`` is a *reference* value of the same task trained with the same budget on the
  initial (never refined) foundation, e.g. the isolated method's ``R[i][j_i]``. Averaged over the
  tasks that join after the first stage (the first task has nothing earlier to transfer from).
  Positive means what the model learned earlier (a refined backbone) helped the new task. This
  is Lopez-Paz & Ranzato's FWT with a trained reference instead of their untrained one
  (``R[i][j_i - 1] - b_i`` with a random-init ``b_i``): the matrix holds no value for a task
  before it joins, since its head does not exist yet.

With no task eligible (a single stage) BWT, forgetting and FWT are NaN, not 0.
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


def joined_stages(matrix: Matrix) -> list[int]:
    """Each task's first stage with a finite value (the stage it joined and first trained)."""
    out = []
    for i, row in enumerate(matrix):
        finite = [j for j, v in enumerate(row) if math.isfinite(float(v))]
        if not finite:
            raise ValueError(f"task {i} has no finite value: cannot tell when it joined")
        out.append(finite[0])
    return out


def per_task_forward_transfer(
    matrix: Matrix, reference: Sequence[float], joined: Sequence[int] | None = None
) -> list[float]:
    """``R[i][joined[i]] - reference[i]`` per task; NaN for tasks joining at stage 0.

    ``joined`` defaults to :func:`joined_stages` (the first finite cell of each row).
    """
    joined = list(joined) if joined is not None else joined_stages(matrix)
    _check(matrix, joined)
    if len(reference) != len(matrix):
        raise ValueError(f"need one reference value per task, got {len(reference)}")
    return [math.nan if j == 0 else float(row[j]) - float(ref)
            for row, j, ref in zip(matrix, joined, reference, strict=True)]


def forward_transfer(
    matrix: Matrix, reference: Sequence[float], joined: Sequence[int] | None = None
) -> float:
    """Mean FWT over the tasks that joined after stage 0 (NaN if none); see the module doc."""
    return _mean(per_task_forward_transfer(matrix, reference, joined))


def fwt_against(matrix: Matrix, reference_matrix: Matrix) -> float:
    """FWT of a run against a reference run of the same stages and task order (e.g. the
    isolated method): ``b_i`` is the reference's value right after task ``i`` joined."""
    if len(reference_matrix) != len(matrix):
        raise ValueError("the reference run needs the same tasks in the same order")
    joined = joined_stages(matrix)
    if joined != joined_stages(reference_matrix):
        raise ValueError("the reference run needs the same stages (tasks join at other stages)")
    reference = [float(row[j]) for row, j in zip(reference_matrix, joined, strict=True)]
    return forward_transfer(matrix, reference, joined)


#: Short names (the definitions above): ``bwt(R, trained)``, ``fwt(R, reference)``.
bwt = backward_transfer
fwt = forward_transfer


def summary(
    matrix: Matrix, trained: Sequence[int], reference: Sequence[float] | None = None
) -> dict[str, float]:
    """``avg``, ``bwt`` and ``forgetting`` of one matrix; ``fwt`` too given a reference."""
    out = {
        "avg": average_final(matrix),
        "bwt": backward_transfer(matrix, trained),
        "forgetting": forgetting(matrix, trained),
    }
    if reference is not None:
        out["fwt"] = forward_transfer(matrix, reference)
    return out
