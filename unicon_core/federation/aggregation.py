"""Per-task aggregation of skills: plain functions on ``{key: numpy array}`` mappings.

Three rules combine one task's site states: :func:`weighted_average` (FedAvg),
:func:`coordinate_median` and :func:`trimmed_mean` (robust to a minority of bad sites; the
latter two ignore example counts, as a poisoned site could also lie about its size).

The server keeps the union of every task's skill as one mapping whose keys carry the task as a
prefix (``"<task>.<skill key>"``). A site only ever sees and returns its task's slice (prefix
removed), and :func:`replace_task` writes an aggregate back into that slice only, so sites of
one task cannot change another task's skill.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from unicon_core.federation.protocol import TASK_SEP
from unicon_core.keys import key_set_problems

Arrays = Mapping[str, np.ndarray]


def task_key(task: str, key: str) -> str:
    """Key of one skill tensor of ``task`` in the union of all skills."""
    return f"{task}{TASK_SEP}{key}"


def split_task_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`task_key`: ``(task, skill key)``."""
    task, sep, rest = key.partition(TASK_SEP)
    if not sep or not task or not rest:
        raise ValueError(f"{key!r} is not a '<task>{TASK_SEP}<skill key>' key")
    return task, rest


def tasks_of(arrays: Arrays) -> list[str]:
    """Task names present in a union mapping, in first-seen order."""
    return list(dict.fromkeys(split_task_key(k)[0] for k in arrays))


def prefix_task(task: str, skill: Arrays) -> dict[str, np.ndarray]:
    """A task's skill under union keys."""
    return {task_key(task, k): v for k, v in skill.items()}


def slice_task(arrays: Arrays, task: str) -> dict[str, np.ndarray]:
    """The skill of ``task`` (prefix removed); a ``KeyError`` if the union has no such task."""
    out = {}
    for key, value in arrays.items():
        owner, rest = split_task_key(key)
        if owner == task:
            out[rest] = value
    if not out:
        raise KeyError(f"no skill for task {task!r}; tasks: {tasks_of(arrays)}")
    return out


def replace_task(arrays: Arrays, task: str, skill: Arrays) -> dict[str, np.ndarray]:
    """A copy of ``arrays`` where ``task``'s slice is ``skill`` (same keys and shapes required)."""
    current = slice_task(arrays, task)
    check_same_layout(current, skill, what=f"new skill of task {task!r}")
    out = dict(arrays)
    out.update(prefix_task(task, skill))
    return out


def check_same_layout(expected: Arrays, actual: Arrays, *, what: str) -> None:
    """Raise a ``ValueError`` naming every key or shape that differs."""
    problems = key_set_problems(expected, actual)
    for key in sorted(set(expected) & set(actual)):
        if np.shape(expected[key]) != np.shape(actual[key]):
            problems.append(f"{key}: shape {np.shape(actual[key])} != {np.shape(expected[key])}")
    if problems:
        raise ValueError(f"{what} does not match: " + "; ".join(problems))


def weighted_average(states: Sequence[Arrays], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """FedAvg: ``sum_i w_i * state_i / sum_i w_i`` per key, accumulated in float64.

    Weights are numbers of training examples. The result keeps each key's input dtype. Summation
    follows the given order, so callers sort replies (e.g. by site) for run-to-run determinism.
    """
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states, {len(weights)}")
    share = normalised_weights(weights)
    for i, state in enumerate(states[1:], start=1):
        check_same_layout(states[0], state, what=f"state {i}")
    out: dict[str, np.ndarray] = {}
    for key, first in states[0].items():
        acc = np.zeros(np.shape(first), dtype=np.float64)
        for state, weight in zip(states, share, strict=True):
            acc += np.asarray(state[key], dtype=np.float64) * weight
        out[key] = acc.astype(np.asarray(first).dtype, copy=False)
    return out


def normalised_weights(weights: Sequence[float]) -> np.ndarray:
    """Weights as float64 shares summing to 1, without overflow for huge claims.

    Each weight is divided by the largest first, so two counts near the float64 maximum still
    give finite shares (their plain sum would be ``inf``). Raises a ``ValueError`` for a
    negative or non-finite weight, or when all are 0.
    """
    w = np.asarray([float(x) for x in weights], np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.size or not w.max() > 0:
        raise ValueError(f"weights must be finite, >= 0 with a positive sum, got {list(weights)}")
    w = w / w.max()
    return w / w.sum()


def coordinate_median(states: Sequence[Arrays]) -> dict[str, np.ndarray]:
    """Coordinate-wise median of the states (Flower's FedMedian rule, per task).

    Robust while fewer than half of the states are arbitrary; keeps each key's dtype.
    """
    _check_states(states)
    return {
        key: np.median(np.stack([np.asarray(s[key], np.float64) for s in states]), axis=0)
        .astype(np.asarray(first).dtype, copy=False)
        for key, first in states[0].items()
    }


def trimmed_mean(states: Sequence[Arrays], trim_fraction: float) -> dict[str, np.ndarray]:
    """Coordinate-wise mean after dropping ``floor(trim_fraction * n)`` values at each end.

    The FedTrimmedAvg rule (Yin et al. 2018), computed as Flower's and scipy's ``trim_mean``
    are (partition, then mean of the kept middle); with 5 sites and ``trim_fraction=0.2`` the
    largest and smallest value of every coordinate are cut.
    """
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    _check_states(states)
    return {
        key: _trim_mean(np.stack([np.asarray(s[key], np.float64) for s in states]), trim_fraction)
        .astype(np.asarray(first).dtype, copy=False)
        for key, first in states[0].items()
    }


def _trim_mean(stacked: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Mean along axis 0 of the values left after cutting ``int(trim_fraction * n)`` per end."""
    low = int(trim_fraction * stacked.shape[0])
    high = stacked.shape[0] - low
    return np.asarray(np.mean(np.partition(stacked, (low, high - 1), axis=0)[low:high], axis=0))


def _check_states(states: Sequence[Arrays]) -> None:
    if not states:
        raise ValueError("need at least one state to aggregate")
    for i, state in enumerate(states[1:], start=1):
        check_same_layout(states[0], state, what=f"state {i}")


def weighted_metrics(
    metrics: Sequence[Mapping[str, float]], weights: Sequence[float]
) -> dict[str, float]:
    """Weighted mean of each metric over the replies that report it and are not NaN.

    A metric that is undefined at one site (e.g. AUC with one class) is left out there rather
    than poisoning the mean; a metric undefined everywhere is NaN.
    """
    keys = list(dict.fromkeys(k for m in metrics for k in m))
    out: dict[str, float] = {}
    for key in keys:
        pairs = [
            (float(m[key]), float(w))
            for m, w in zip(metrics, weights, strict=True)
            if key in m and np.isfinite(m[key]) and np.isfinite(w) and w > 0
        ]
        if not pairs:
            out[key] = float("nan")
            continue
        share = normalised_weights([w for _, w in pairs])
        out[key] = float(sum(v * s for (v, _), s in zip(pairs, share, strict=True)))
    return out
