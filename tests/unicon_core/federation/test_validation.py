"""Update validation: each kind of malformed site update is rejected with a reason."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from unicon_core.federation.validation import ValidationPolicy, update_norm, update_problems

HASH = "a" * 64
REFERENCE = {
    "adapter.x": np.zeros((2, 3), np.float32),
    "head.w": np.ones((4,), np.float32),
}


def _good() -> dict[str, np.ndarray]:
    return {k: v + np.float32(0.1) for k, v in REFERENCE.items()}


def _with(key: str, value: np.ndarray) -> dict[str, np.ndarray]:
    out = _good()
    out[key] = value
    return out


def _without(key: str) -> dict[str, np.ndarray]:
    out = _good()
    del out[key]
    return out


CASES: list[tuple[str, Callable[[], dict[str, np.ndarray]], str]] = [
    ("nan", lambda: _with("head.w", np.array([0, np.nan, 0, 0], np.float32)), "non-finite"),
    ("inf", lambda: _with("adapter.x", np.full((2, 3), np.inf, np.float32)), "non-finite"),
    ("shape", lambda: _with("head.w", np.ones((5,), np.float32)), "shape (5,) != (4,)"),
    ("dtype", lambda: _with("head.w", np.ones((4,), np.float64)), "dtype float64"),
    ("integer", lambda: _with("head.w", np.ones((4,), np.int32)), "dtype int32"),
    ("missing", lambda: _without("head.w"), "missing keys ['head.w']"),
    ("unknown", lambda: {**_good(), "backbone.q": np.ones(2, np.float32)}, "unknown keys"),
    ("norm", lambda: {k: v * np.float32(100) for k, v in _good().items()}, "exceeds the bound"),
]


@pytest.mark.parametrize(("name", "make", "reason"), CASES, ids=[c[0] for c in CASES])
def test_malformed_update_is_rejected_with_the_reason(
    name: str, make: Callable[[], dict[str, np.ndarray]], reason: str
) -> None:
    # Prepare
    policy = ValidationPolicy(HASH, max_update_norm=10.0)

    # Execute
    problems = update_problems(REFERENCE, make(), foundation_hash=HASH, policy=policy)

    # Assert
    assert problems, name
    assert any(reason in p for p in problems), problems


def test_foundation_mismatch_is_rejected_before_anything_else() -> None:
    policy = ValidationPolicy(HASH)
    problems = update_problems(REFERENCE, _good(), foundation_hash="b" * 64, policy=policy)
    assert len(problems) == 1 and "foundation hash" in problems[0]


def test_a_valid_update_passes_and_the_norm_is_measured_from_the_skill_sent() -> None:
    # Prepare: every one of the 10 values moved by 0.1 -> norm sqrt(10) * 0.1
    good = _good()
    expected = float(np.sqrt(10) * 0.1)

    # Execute / Assert
    assert update_norm(REFERENCE, good) == pytest.approx(expected, rel=1e-6)
    assert update_problems(REFERENCE, good, foundation_hash=HASH,
                           policy=ValidationPolicy(HASH, expected * 1.01)) == []
    assert update_problems(REFERENCE, good, foundation_hash=HASH,
                           policy=ValidationPolicy(HASH, expected * 0.99)) != []
    assert update_problems(REFERENCE, good, foundation_hash=HASH, policy=ValidationPolicy(HASH)) \
        == []


@pytest.mark.parametrize("bound", [0.0, -1.0])
def test_policy_refuses_a_non_positive_bound(bound: float) -> None:
    with pytest.raises(ValueError, match="max_update_norm"):
        ValidationPolicy(HASH, bound)
