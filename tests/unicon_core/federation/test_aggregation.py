"""Per-task aggregation: exact weighted averages and isolation between tasks."""

from __future__ import annotations

import numpy as np
import pytest

from unicon_core.federation.aggregation import (
    prefix_task,
    replace_task,
    slice_task,
    split_task_key,
    task_key,
    tasks_of,
    weighted_average,
    weighted_metrics,
)


def _state(rng: np.random.Generator, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {
        "adapter.l0.lora_A.weight": rng.normal(size=(2, 8)).astype(dtype),
        "head.fc.bias": rng.normal(size=(3,)).astype(dtype),
    }


@pytest.mark.parametrize(
    ("weights", "dtype"),
    [
        ([1, 1, 1], np.float32),
        ([10, 30, 60], np.float32),
        ([7, 0, 5], np.float64),
        ([1], np.float32),
    ],
)
def test_weighted_average_is_exact(weights: list[int], dtype: type) -> None:
    # Prepare
    rng = np.random.default_rng(0)
    states = [_state(rng, dtype) for _ in weights]

    # Execute
    out = weighted_average(states, weights)

    # Assert: matches the definition computed independently, keeps dtype and shapes
    total = sum(weights)
    for key in states[0]:
        expected = sum(s[key].astype(np.float64) * w for s, w in zip(states, weights, strict=True))
        np.testing.assert_allclose(out[key], expected / total, rtol=1e-6, atol=1e-7)
        assert out[key].dtype == dtype
        assert out[key].shape == states[0][key].shape


def test_weighted_average_weights_by_examples_not_replies() -> None:
    # Prepare: a site with 3x the examples pulls the average 3x as hard
    a = {"head.w": np.zeros(2, np.float32)}
    b = {"head.w": np.full(2, 4.0, np.float32)}

    # Execute
    out = weighted_average([a, b], [1, 3])

    # Assert
    np.testing.assert_allclose(out["head.w"], [3.0, 3.0])


@pytest.mark.parametrize(
    ("states", "weights", "match"),
    [
        ([{"a": np.zeros(2)}, {"b": np.zeros(2)}], [1, 1], "missing"),
        ([{"a": np.zeros(2)}, {"a": np.zeros(3)}], [1, 1], "shape"),
        ([{"a": np.zeros(2)}], [0], "positive sum"),
        ([{"a": np.zeros(2)}], [1, 2], "one weight per state"),
        ([], [], "one weight per state"),
    ],
)
def test_weighted_average_rejects_bad_input(states: list, weights: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        weighted_average(states, weights)


def test_replace_task_leaves_other_tasks_untouched() -> None:
    # Prepare: a union of two tasks' skills
    rng = np.random.default_rng(1)
    union = {**prefix_task("cls", _state(rng)), **prefix_task("seg", _state(rng))}
    before = {k: v.copy() for k, v in union.items()}
    new_cls = {k: v + 1 for k, v in slice_task(union, "cls").items()}

    # Execute
    out = replace_task(union, "cls", new_cls)

    # Assert: seg bit-identical, cls replaced, input not mutated
    for key, value in slice_task(before, "seg").items():
        np.testing.assert_array_equal(slice_task(out, "seg")[key], value)
    for key, value in new_cls.items():
        np.testing.assert_array_equal(slice_task(out, "cls")[key], value)
    for key, value in before.items():
        np.testing.assert_array_equal(union[key], value)


def test_replace_task_refuses_foreign_layout() -> None:
    union = prefix_task("cls", {"head.w": np.zeros(2)})
    with pytest.raises(ValueError, match="unexpected"):
        replace_task(union, "cls", {"head.w": np.zeros(2), "adapter.x": np.zeros(1)})


def test_task_keys_round_trip() -> None:
    assert split_task_key(task_key("tumour_cls", "adapter.a.b.weight")) == (
        "tumour_cls", "adapter.a.b.weight")
    assert tasks_of({"b.x": 1, "a.y": 2, "b.z": 3}) == ["b", "a"]
    with pytest.raises(ValueError):
        split_task_key("nodot")
    with pytest.raises(KeyError, match="no skill"):
        slice_task({"a.x": np.zeros(1)}, "b")


def test_weighted_metrics_skip_undefined_values() -> None:
    # Prepare: AUC undefined (NaN) at one site
    metrics = [{"auc": 0.8, "loss": 1.0}, {"auc": float("nan"), "loss": 3.0}, {"loss": 2.0}]

    # Execute
    out = weighted_metrics(metrics, [1, 1, 2])

    # Assert
    assert out["auc"] == pytest.approx(0.8)
    assert out["loss"] == pytest.approx((1 + 3 + 4) / 4)
    assert np.isnan(weighted_metrics([{"auc": float("nan")}], [1])["auc"])
