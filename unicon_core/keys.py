"""String keys shared across modules (batches, skill tensors, metadata)."""

from __future__ import annotations

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
