"""Task metrics from kept libraries, in MONAI's protocol: ``update``, ``aggregate``, ``reset``.

Classification: ROC AUC and balanced accuracy (scikit-learn). Segmentation: Dice and HD95
(MONAI), foreground classes only. Survival: Harrell's C-index (scikit-survival). A metric that
is undefined on the data is reported as NaN, never guessed and never an error that stops a
round: AUC with one class present, a C-index without comparable pairs (or without events),
any metric of an empty split, and metrics of non-finite outputs (a diverged model).

Every primary metric comes with its n (``num_examples``) and a 95 % percentile bootstrap
interval over the evaluated cases (``<metric>_ci_low``/``<metric>_ci_high``,
:func:`bootstrap_ci`; seeded, so equal predictions give equal intervals). ``primary_only``
accumulators (the continual matrix) skip the intervals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from unicon_core.config import TaskKind, TaskSpec
from unicon_core.keys import BatchKey

#: The metric each task kind is ranked by (higher is better for all three).
PRIMARY_METRIC: dict[TaskKind, str] = {
    TaskKind.CLASSIFICATION: "auc",
    TaskKind.SEGMENTATION: "dice",
    TaskKind.SURVIVAL: "c_index",
}


#: Bootstrap resamples of a metric's confidence interval.
BOOTSTRAP_RESAMPLES = 200
#: Suffixes of the interval bounds next to a metric (``auc_ci_low``, ``auc_ci_high``).
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(index)`` over ``n`` cases.

    ``statistic`` takes an array of case indices (drawn with replacement) and returns the
    metric on those cases; a resample where it is undefined (NaN, e.g. AUC on one class) is
    left out. Returns ``(nan, nan)`` when fewer than half of the resamples are defined or
    ``n < 2``: an interval from a handful of cases would look more certain than it is.
    """
    if n < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], float)
    values = values[np.isfinite(values)]
    if len(values) < resamples / 2:
        return math.nan, math.nan
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def with_ci(
    out: dict[str, float], name: str, statistic: Callable[[np.ndarray], float], n: int
) -> dict[str, float]:
    """``out`` plus the bootstrap interval of metric ``name`` (NaN when ``out[name]`` is)."""
    low, high = (
        bootstrap_ci(statistic, n) if math.isfinite(out.get(name, math.nan)) else (math.nan,) * 2
    )
    return {**out, f"{name}{CI_LOW}": low, f"{name}{CI_HIGH}": high}


class TaskMetric(Protocol):
    """Accumulates a task's predictions batch by batch."""

    def update(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> None: ...

    def aggregate(self) -> dict[str, float]: ...

    def reset(self) -> None: ...


class ClassificationMetric:
    """ROC AUC (one-vs-rest for several classes) and balanced accuracy."""

    def __init__(self, num_classes: int, ci: bool = True) -> None:
        self.num_classes = num_classes
        self.ci = ci
        self.reset()

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self._probs.append(torch.softmax(output.detach().float(), dim=1).cpu().numpy())
        self._labels.append(batch[BatchKey.LABEL.value].detach().cpu().numpy().reshape(-1))

    def aggregate(self) -> dict[str, float]:
        from sklearn.metrics import balanced_accuracy_score

        if not self._labels:
            return {"auc": math.nan, "balanced_accuracy": math.nan, "num_examples": 0.0}
        probs, labels = np.concatenate(self._probs), np.concatenate(self._labels)
        if not np.isfinite(probs).all():  # a diverged model: no ranking, no argmax to trust
            return {"auc": math.nan, "balanced_accuracy": math.nan,
                    "num_examples": float(len(labels))}
        auc = self._auc(labels, probs)
        bacc = float(balanced_accuracy_score(labels, probs.argmax(axis=1)))
        out = {"auc": auc, "balanced_accuracy": bacc, "num_examples": float(len(labels))}
        if not self.ci:
            return out
        return with_ci(out, "auc", lambda i: self._resampled_auc(labels[i], probs[i]), len(labels))

    def _resampled_auc(self, labels: np.ndarray, probs: np.ndarray) -> float:
        try:  # a resample may miss a class one-vs-rest needs
            return self._auc(labels, probs)
        except ValueError:
            return math.nan

    def _auc(self, labels: np.ndarray, probs: np.ndarray) -> float:
        from sklearn.metrics import roc_auc_score

        if len(np.unique(labels)) < 2:
            return math.nan
        if self.num_classes == 2:
            return float(roc_auc_score(labels, probs[:, 1]))
        return float(
            roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(self.num_classes)))
        )


class SegmentationMetric:
    """Mean Dice and 95th-percentile Hausdorff distance over foreground classes (MONAI).

    ``hd95=False`` computes Dice only: HD95's distance transforms cost more than the forward
    pass, and the continual matrix needs only the primary metric.
    """

    def __init__(self, num_classes: int, hd95: bool = True) -> None:
        from monai.metrics import DiceMetric, HausdorffDistanceMetric

        self.num_classes = num_classes
        self._dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        self._hd = (
            HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
            if hd95 else None
        )
        self.reset()

    def reset(self) -> None:
        self._dice.reset()
        if self._hd is not None:
            self._hd.reset()
        self._count = 0

    def update(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        from monai.networks.utils import one_hot

        pred = one_hot(output.detach().argmax(dim=1, keepdim=True), self.num_classes)
        target = one_hot(batch[BatchKey.MASK.value].detach().long(), self.num_classes)
        self._dice(pred, target)
        if self._hd is not None:
            with warnings.catch_warnings():  # empty masks are expected; they aggregate as NaN
                warnings.simplefilter("ignore", UserWarning)
                self._hd(pred, target)
        self._count += output.shape[0]

    def aggregate(self) -> dict[str, float]:
        if not self._count:
            out = {"dice": math.nan, "num_examples": 0.0}
            return out if self._hd is None else {**out, "hd95": math.nan}
        dice = self._dice.get_buffer().float()
        with warnings.catch_warnings():  # all-NaN (no foreground anywhere) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            per_case = dice.cpu().numpy()
            out = {"dice": float(np.nanmean(per_case)), "num_examples": float(self._count)}
            if self._hd is not None:  # the full set of metrics: with the Dice's interval
                out = with_ci(out, "dice", lambda i: _nanmean(per_case[i]), len(per_case))
            if self._hd is not None:
                hd = self._hd.get_buffer().float().cpu().numpy()
                out["hd95"] = float(np.nanmean(np.where(np.isinf(hd), np.nan, hd)))
            return out


class SurvivalMetric:
    """Harrell's concordance index of the predicted risk against (time, event)."""

    def __init__(self, ci: bool = True) -> None:
        self.ci = ci
        self.reset()

    def reset(self) -> None:
        self._risk: list[np.ndarray] = []
        self._time: list[np.ndarray] = []
        self._event: list[np.ndarray] = []

    def update(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self._risk.append(output.detach().float().cpu().numpy().reshape(-1))
        self._time.append(batch[BatchKey.TIME.value].detach().cpu().numpy().reshape(-1))
        self._event.append(batch[BatchKey.EVENT.value].detach().cpu().numpy().reshape(-1))

    def aggregate(self) -> dict[str, float]:
        from sksurv.exceptions import NoComparablePairException
        from sksurv.metrics import concordance_index_censored

        if not self._risk:
            return {"c_index": math.nan, "num_examples": 0.0}
        risk, time = np.concatenate(self._risk), np.concatenate(self._time)
        event = np.concatenate(self._event).astype(bool)

        def cindex(i: np.ndarray) -> float:
            if not event[i].any() or not np.isfinite(risk[i]).all():
                return math.nan
            try:
                return float(concordance_index_censored(event[i], time[i], risk[i])[0])
            except NoComparablePairException:  # e.g. the only event has the longest time
                return math.nan

        out = {"c_index": cindex(np.arange(len(risk))), "num_examples": float(len(risk))}
        return with_ci(out, "c_index", cindex, len(risk)) if self.ci else out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values (NaN when none): the Dice of a resample of cases."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def metric_for(spec: TaskSpec, primary_only: bool = False) -> TaskMetric:
    """The metric accumulator of a task kind (``primary_only``: skip costly secondary ones)."""
    if spec.kind is TaskKind.CLASSIFICATION:
        return ClassificationMetric(spec.num_classes, ci=not primary_only)
    if spec.kind is TaskKind.SEGMENTATION:
        return SegmentationMetric(spec.num_classes, hd95=not primary_only)
    return SurvivalMetric(ci=not primary_only)
