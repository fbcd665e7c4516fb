"""Red team, surface "metrics": a metric undefined on tiny or degenerate data is NaN, never an
error that stops a round (see ``docs/security.md``, "Files and outputs").

Each case failed (raised) before the fix; outcome ``nan``.
"""

from __future__ import annotations

import math

import pytest
import torch

from unicon_core.metrics import ClassificationMetric, SegmentationMetric, SurvivalMetric

METRICS = "metrics"


@pytest.mark.redteam(surface=METRICS, outcome="nan")
def test_c_index_without_comparable_pairs_is_nan() -> None:
    # the only event has the longest time: no pair can be ordered
    metric = SurvivalMetric()
    metric.update(torch.tensor([0.1, 0.2]),
                  {"time": torch.tensor([5.0, 3.0]), "event": torch.tensor([1.0, 0.0])})
    out = metric.aggregate()
    assert math.isnan(out["c_index"]) and out["num_examples"] == 2


@pytest.mark.redteam(surface=METRICS, outcome="nan")
def test_c_index_of_a_diverged_model_is_nan() -> None:
    metric = SurvivalMetric()
    metric.update(torch.tensor([float("nan"), 0.2, 0.3]),
                  {"time": torch.tensor([3.0, 5.0, 7.0]), "event": torch.tensor([1.0, 1.0, 0.0])})
    assert math.isnan(metric.aggregate()["c_index"])


@pytest.mark.redteam(surface=METRICS, outcome="nan")
def test_auc_and_balanced_accuracy_of_a_diverged_model_are_nan() -> None:
    metric = ClassificationMetric(2)
    metric.update(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), {"label": torch.tensor([0, 1])})
    out = metric.aggregate()
    assert math.isnan(out["auc"]) and math.isnan(out["balanced_accuracy"])
    assert out["num_examples"] == 2


@pytest.mark.redteam(surface=METRICS, outcome="nan")
@pytest.mark.parametrize(
    ("metric", "keys"),
    [
        (lambda: ClassificationMetric(2), ("auc", "balanced_accuracy")),
        (lambda: SegmentationMetric(2), ("dice", "hd95")),
        (lambda: SurvivalMetric(), ("c_index",)),
    ],
)
def test_an_empty_split_gives_nan_and_zero_examples(metric, keys: tuple[str, ...]) -> None:
    out = metric().aggregate()
    assert all(math.isnan(out[k]) for k in keys) and out["num_examples"] == 0
