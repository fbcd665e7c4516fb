"""Bootstrap intervals next to every primary metric (issue #13 item 5)."""

from __future__ import annotations

import math

import numpy as np
import torch

from unicon_core.keys import BatchKey
from unicon_core.metrics import ClassificationMetric, SurvivalMetric, bootstrap_ci


def test_bootstrap_ci_of_a_mean_covers_it_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=30), rng.normal(size=3000)
    lo_s, hi_s = bootstrap_ci(lambda i: float(small[i].mean()), len(small))
    lo_l, hi_l = bootstrap_ci(lambda i: float(large[i].mean()), len(large))
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5  # about 1/sqrt(100) as wide
    assert bootstrap_ci(lambda i: float(small[i].mean()), len(small)) == (lo_s, hi_s)  # seeded


def test_undefined_resamples_give_no_interval() -> None:
    assert all(math.isnan(v) for v in bootstrap_ci(lambda i: math.nan, 50))
    assert all(math.isnan(v) for v in bootstrap_ci(lambda i: 1.0, 1))


def test_classification_and_survival_report_intervals() -> None:
    # Prepare: informative scores on 60 cases
    rng = np.random.default_rng(1)
    labels = torch.tensor(rng.integers(0, 2, 60))
    logits = torch.stack([-labels.float(), labels.float()], dim=1) + torch.tensor(
        rng.normal(scale=1.5, size=(60, 2)), dtype=torch.float32)
    cls = ClassificationMetric(2)
    cls.update(logits, {BatchKey.LABEL.value: labels})
    surv = SurvivalMetric()
    time = torch.tensor(rng.uniform(1, 10, 60))
    surv.update(-time.float() + torch.tensor(rng.normal(size=60)).float(),
                {BatchKey.TIME.value: time, BatchKey.EVENT.value: torch.ones(60)})
    # Execute
    c, s = cls.aggregate(), surv.aggregate()
    # Assert
    assert c["auc_ci_low"] < c["auc"] < c["auc_ci_high"] and c["num_examples"] == 60
    assert s["c_index_ci_low"] < s["c_index"] < s["c_index_ci_high"]
    assert set(ClassificationMetric(2, ci=False).aggregate()) == {
        "auc", "balanced_accuracy", "num_examples"}
