"""String keys shared across modules (batches, skill tensors, metadata)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


class BatchKey(str, Enum):
    """Keys of a training/evaluation batch dictionary."""

    INPUT = "input"
    LABEL = "label"
    MASK = "mask"
    TIME = "time"
    EVENT = "event"
    ID = "id"
    META = "meta"


class SkillPart(str, Enum):
    """Prefixes of the three kinds of tensors in a skill state dict."""

    ADAPTER = "adapter"
    HEAD = "head"
    STEM = "stem"


def key_set_problems(
    expected: Iterable[str], actual: Iterable[str], extra: str = "unexpected"
) -> list[str]:
    """``missing keys [...]`` and ``<extra> keys [...]`` of ``actual`` against ``expected``
    (sorted; empty when the sets are equal). Skills, updates and layouts all check this."""
    want, got = set(expected), set(actual)
    problems = []
    if missing := sorted(want - got):
        problems.append(f"missing keys {missing}")
    if surplus := sorted(got - want):
        problems.append(f"{extra} keys {surplus}")
    return problems
